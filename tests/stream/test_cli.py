"""The command line on the session broker: each subcommand is one library call."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from kafka import KafkaConsumer, TopicPartition

from stream.events import Click, EventCodec, Impression

pytestmark = pytest.mark.broker


def fairstream(settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ,
           "FAIRSTREAM_KAFKA__BOOTSTRAP": settings.kafka.bootstrap,
           "FAIRSTREAM_KAFKA__EVENTS_PARTITIONS": str(settings.kafka.events_partitions),
           "FAIRSTREAM_TOPICS__PREFIX": settings.topics.prefix,
           "FAIRSTREAM_DATA__CACHE_DIR": settings.data.cache_dir}
    return subprocess.run([sys.executable, "-m", "stream.cli", *args], env=env, text=True,
                          capture_output=True, timeout=120, check=False)


def read_all(settings, topic: str, partitions: int) -> list[bytes]:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap, enable_auto_commit=False)
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    consumer.seek_to_beginning()
    values, quiet_since = [], time.monotonic()
    while time.monotonic() - quiet_since < 2.0:
        batch = consumer.poll(200)
        for records in batch.values():
            values.extend(r.value for r in records)
            quiet_since = time.monotonic()
    consumer.close()
    return values


def test_topics_catalog_and_replay_commands(make_settings, movielens):
    settings = make_settings()
    created = fairstream(settings, "topics", "create")
    assert created.returncode == 0, created.stderr
    assert settings.topics.events in created.stdout
    again = fairstream(settings, "topics", "create")
    assert "none (all exist)" in again.stdout

    catalog = fairstream(settings, "produce", "catalog")
    assert catalog.returncode == 0, catalog.stderr
    assert "published 1682 items" in catalog.stdout
    assert len(read_all(settings, settings.topics.items, 1)) == 1682

    started = time.monotonic()
    replay = fairstream(settings, "produce", "replay", "--dataset", "ml100k", "--limit", "200",
                        "--rate", "400")
    assert replay.returncode == 0, replay.stderr
    liked = int((movielens.ratings.rating[:200] >= 4).sum())
    assert f"published {200 + liked} events" in replay.stdout
    assert time.monotonic() - started >= (200 + liked) / 400  # --rate throttles
    codec = EventCodec()
    events = [codec.decode(v) for v in read_all(settings, settings.topics.events, 2)]
    assert sum(isinstance(e, Impression) for e in events) == 200
    assert sum(isinstance(e, Click) for e in events) == liked


def test_config_errors_fail_fast_naming_the_key(make_settings, tmp_path):
    settings = make_settings()
    bad = tmp_path / "bad.toml"
    bad.write_text("[bandit]\nalpah = 1.0\n")
    out = fairstream(settings, "--config", str(bad), "topics", "create")
    assert out.returncode == 2
    assert "alpah" in out.stderr


def test_data_fetch_without_names_fetches_both():
    """The Makefile's `fairstream data fetch` (no names) must parse; both data sets."""
    from stream.cli import build_parser

    assert build_parser().parse_args(["data", "fetch"]).datasets == []
    assert build_parser().parse_args(["data", "fetch", "obd"]).datasets == ["obd"]
    done = subprocess.run([sys.executable, "-m", "stream.cli", "data", "fetch", "--help"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and "default: both" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "stream.cli", "data", "fetch", "imdb"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "unknown data set 'imdb'" in bad.stderr
