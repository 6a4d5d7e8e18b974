"""docker-compose.yml: structure always, `docker compose config` when a client is present."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import msgspec
import pytest
import yaml
from promserver import DEPLOY, REPO_ROOT

from stream.settings import Settings

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
SERVICES = {"kafka", "topic-init", "worker", "serve", "producer", "prometheus", "grafana"}
LONG_RUNNING = {"kafka", "worker", "serve", "prometheus", "grafana"}
FAIRSTREAM_SERVICES = {"topic-init", "worker", "serve", "producer"}

ENV_KEY = re.compile(r"FAIRSTREAM_([A-Z][A-Z0-9_]*?[A-Z0-9])__([A-Z][A-Z0-9_]*[A-Z0-9])")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _app_settings_keys() -> dict[str, set[str]]:
    """Sections and keys of the application's settings object."""
    return {f.name: set(f.type.__struct_fields__) for f in msgspec.structs.fields(Settings)}


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_services_present(compose):
    assert set(compose["services"]) >= SERVICES


def test_two_worker_replicas(compose):
    assert compose["services"]["worker"]["deploy"]["replicas"] == 2
    # replicas and `--scale` need a service without a fixed name or host port
    assert "container_name" not in compose["services"]["worker"]
    assert "ports" not in compose["services"]["worker"]


def test_kafka_is_pinned_apache_kafka_in_kraft_mode(compose):
    kafka = compose["services"]["kafka"]
    image, _, tag = kafka["image"].partition(":")
    assert image == "apache/kafka" and re.fullmatch(r"\d+\.\d+\.\d+", tag)
    env = _environment(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "zookeeper" not in COMPOSE_FILE.read_text().lower()


def test_third_party_images_are_pinned(compose):
    for name, service in compose["services"].items():
        if "build" in service:
            continue
        tag = service["image"].rpartition(":")[2]
        assert ":" in service["image"] and tag not in {"latest", ""}, name


@pytest.mark.parametrize("name", sorted(LONG_RUNNING))
def test_long_running_services_have_healthchecks(compose, name):
    check = compose["services"][name]["healthcheck"]
    assert check["test"] and check.get("interval")


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_restart_policies(compose, name):
    restart = compose["services"][name].get("restart")
    expected = {"unless-stopped", "always"} if name in LONG_RUNNING else {"on-failure"}
    assert restart in expected, f"{name}: restart={restart}"


def test_fairstream_services_use_the_built_image_and_cli(compose):
    services = compose["services"]
    for name in FAIRSTREAM_SERVICES:
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (REPO_ROOT / services[name]["build"]["context"] / "deploy/Dockerfile").is_file()
    assert services["topic-init"]["command"] == ["topics", "create"]
    assert services["worker"]["command"] == ["worker"]
    assert services["serve"]["command"] == ["serve"]
    producer = " ".join(services["producer"]["command"])
    assert "fairstream produce catalog" in producer
    assert "fairstream produce replay --dataset ml100k --rate" in producer


def test_startup_order(compose):
    services = compose["services"]
    assert services["topic-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name in ("worker", "serve", "producer"):
        dep = services[name]["depends_on"]["topic-init"]
        assert dep["condition"] == "service_completed_successfully", name


def test_fairstream_environment_is_well_formed_and_known(compose):
    known = _app_settings_keys()
    problems = []
    for name in FAIRSTREAM_SERVICES:
        env = _environment(compose["services"][name])
        assert "FAIRSTREAM_KAFKA__BOOTSTRAP" in env, name
        for key in env:
            if not key.startswith("FAIRSTREAM_"):
                problems.append(f"{name}: {key} is not a FAIRSTREAM_<SECTION>__<KEY> setting")
                continue
            match = ENV_KEY.fullmatch(key)
            if not match:
                problems.append(f"{name}: {key} is not FAIRSTREAM_<SECTION>__<KEY>")
                continue
            section, setting = match.group(1).lower(), match.group(2).lower()
            if setting not in known.get(section, set()):
                problems.append(f"{name}: {key} names no known setting {section}.{setting}")
    assert not problems, "\n".join(problems)


def test_secrets_are_not_hardcoded(compose):
    for name in FAIRSTREAM_SERVICES:
        key = _environment(compose["services"][name])["FAIRSTREAM_POLICY__SIGNING_KEY"]
        assert key.startswith("${") and ":?" in key, f"{name}: signing key must be required input"


def test_worker_metrics_port_matches_scrape_config(compose):
    port = _environment(compose["services"]["worker"])["FAIRSTREAM_WORKER__METRICS_PORT"]
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    (sd,) = jobs["fairstream-worker"]["dns_sd_configs"]
    assert sd["names"] == ["worker"] and str(sd["port"]) == port
    assert jobs["fairstream-serve"]["static_configs"][0]["targets"] == ["serve:8000"]


def _bind_mounts(service: dict) -> list[tuple[str, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            source, target = volume.get("source", ""), volume["target"]
        else:
            source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts.append((source, target))
    return mounts


@pytest.mark.parametrize("name", ["prometheus", "grafana"])
def test_mounts_point_at_files_in_the_repo(compose, name):
    mounts = _bind_mounts(compose["services"][name])
    assert mounts
    for source, _ in mounts:
        assert (REPO_ROOT / source).exists(), f"{name}: {source} does not exist"


def test_prometheus_rule_glob_is_mounted(compose):
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = dict((t, s) for s, t in _bind_mounts(compose["services"]["prometheus"]))
    for pattern in prom["rule_files"]:
        directory, _, glob = pattern.rpartition("/")
        assert directory in targets, f"{pattern} is not mounted"
        assert list((REPO_ROOT / targets[directory]).glob(glob)), pattern


def test_grafana_provisioning_is_mounted(compose):
    targets = {t: s for s, t in _bind_mounts(compose["services"]["grafana"])}
    provider = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/fairstream.yml").read_text()
    )
    dash_dir = provider["providers"][0]["options"]["path"]
    assert dash_dir in targets and (REPO_ROOT / targets[dash_dir] / "fairstream.json").is_file()
    assert "/etc/grafana/provisioning/datasources" in targets
    assert "/etc/grafana/provisioning/dashboards" in targets


def test_dockerfile_builds_cpu_torch_by_default():
    text = (DEPLOY / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in text
    assert "FROM ${BASE_IMAGE}" in text
    assert "ARG TORCH_VERSION=2.13.0" in text
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_docker_compose_config():
    command = _compose_command()
    if command is None:
        pytest.skip("no Docker client with compose here; the structure tests above still ran")
    def config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*command, "-f", str(COMPOSE_FILE), "config", "-q"],
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)

    env = {k: v for k, v in os.environ.items() if k != "POLICY_SIGNING_KEY"}
    result = config({**env, "POLICY_SIGNING_KEY": "test-only-key"})
    assert result.returncode == 0, result.stderr
    # Without a signing key the stack refuses to start rather than run unsigned.
    result = config(env)
    assert result.returncode != 0 and "POLICY_SIGNING_KEY" in result.stderr


def _service_settings(compose, name):
    from stream.settings import load_settings

    env = _environment(compose["services"][name])
    return load_settings(env={k: v for k, v in env.items() if k.startswith("FAIRSTREAM_")})


def test_workers_exchange_statistics_and_topic_init_creates_their_topic(compose):
    """The worker role folds the others' statistics (docs/scaling.md), with what that
    needs; the server does not take part; topic-init creates fairstream.stats with a
    partition per events partition, kept for ever, the profiles' compacted changelog
    beside it, and the compacted serving profiles the servers read."""
    from stream.kafka.topics import topic_specs

    worker = _service_settings(compose, "worker")
    # one fine-tune for the group (the publisher trains, every partition re-bases), and
    # the profiles' store on disk
    assert worker.stats.exchange and worker.finetune.enabled
    assert worker.features.store(worker.stats.exchange) == "rocksdb"
    serve = _service_settings(compose, "serve")
    assert not serve.stats.exchange and serve.serve.profiles == "topic"
    specs = {t.name: t for t in topic_specs(_service_settings(compose, "topic-init"))}
    stats = specs[worker.topics.stats]
    assert stats.num_partitions == specs[worker.topics.events].num_partitions \
        == worker.kafka.events_partitions
    assert dict(stats.topic_configs)["retention.ms"] == "-1"
    assert dict(specs[worker.topics.policies].topic_configs)["cleanup.policy"] == "compact"
    profiles = specs[worker.topics.profiles]  # restored by a partition's next owner
    assert profiles.num_partitions == worker.kafka.events_partitions
    assert dict(profiles.topic_configs)["cleanup.policy"] == "compact"
    serving = specs[worker.topics.serving_profiles]  # what servers read, not the events
    assert serving.num_partitions == worker.kafka.events_partitions
    assert dict(serving.topic_configs)["cleanup.policy"] == "compact"


def test_scaling_workers_is_documented_with_its_bound():
    readme = (DEPLOY / "README.md").read_text()
    assert "docker compose up -d --scale worker=N" in readme
    assert "bounded by the partition count" in readme
    assert (REPO_ROOT / "docs" / "scaling.md").is_file()
