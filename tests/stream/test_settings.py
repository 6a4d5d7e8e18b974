import pytest

from stream.exceptions import ConfigError
from stream.settings import Settings, load_settings


def test_defaults_are_valid():
    s = load_settings(env={})
    assert s == Settings()
    assert s.topics.all() == ["fairstream.items", "fairstream.events", "fairstream.events.dlq",
                              "fairstream.policies", "fairstream.fairness", "fairstream.stats",
                              "fairstream.erasure", "fairstream.profiles",
                              "fairstream.experiments", "fairstream.profiles.serving"]


def test_file_then_environment(tmp_path):
    path = tmp_path / "fs.toml"
    path.write_text('[kafka]\nbootstrap = "broker:9092"\n[bandit]\nalpha = 2.0\n')
    s = load_settings(path, env={"FAIRSTREAM_BANDIT__ALPHA": "0.25", "HOME": "/x"})
    assert s.kafka.bootstrap == "broker:9092"
    assert s.bandit.alpha == 0.25


@pytest.mark.parametrize("text, key", [
    ("[kafka]\nbootstrp = 'x'\n", "bootstrp"),
    ("[kafkaa]\nbootstrap = 'x'\n", "kafkaa"),
    ("[bandit]\nalpha = 'high'\n", "alpha"),
    ("[bandit]\nalgorithm = 'ucb2'\n", "algorithm"),
])
def test_bad_file_keys_are_named(tmp_path, text, key):
    path = tmp_path / "fs.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=key):
        load_settings(path, env={})


@pytest.mark.parametrize("env, key", [
    ({"FAIRSTREAM_KAFKA__NOPE": "1"}, "kafka.nope"),
    ({"FAIRSTREAM_NOPE__X": "1"}, "nope.x"),
    ({"FAIRSTREAM_BANDIT__ALPHA": "lots"}, "alpha"),
    ({"FAIRSTREAM_BANDIT__GAMMA": "1.5"}, "bandit.gamma"),
    ({"FAIRSTREAM_FEATURES__DIM": "0"}, "features.dim"),
    ({"FAIRSTREAM_BANDIT__EPSILON": "-0.1"}, "bandit.epsilon"),
    ({"FAIRSTREAM_WORKER__SERVING_PROFILES_EVERY_S": "0"}, "worker.serving_profiles_every_s"),
    ({"FAIRSTREAM_WORKER__SERVING_PROFILES_EVERY_S": "nan"},
     "worker.serving_profiles_every_s"),
    ({"FAIRSTREAM_SERVE__PROFILES": "both"}, "serve.profiles"),
])
def test_bad_environment_overrides_are_named(env, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(env=env)


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[kafka\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, env={})


def test_the_statistics_exchange_refuses_what_it_cannot_merge():
    on = {"exchange": True}
    assert Settings().replace(stats=on, finetune={"enabled": False}).stats.exchange
    # one fine-tune for the group (docs/scaling.md): each partition samples its share
    assert Settings().replace(stats=on, finetune={"enabled": True}).finetune.enabled
    for sections, key in [({"finetune": {"enabled": True, "buffer_capacity": 3},
                            "kafka": {"events_partitions": 4}}, "finetune.buffer_capacity"),
                          ({"bandit": {"algorithm": "egreedy"}}, "bandit.algorithm"),
                          ({"bandit": {"algorithm": "linucb", "gamma": 0.99}}, "bandit.gamma")]:
        with pytest.raises(ConfigError, match=key):
            Settings().replace(stats=on, **({"finetune": {"enabled": False}} | sections))


def test_the_profile_store_is_on_disk_with_the_exchange_and_refused_on_disk_without():
    on = Settings().replace(stats={"exchange": True}, finetune={"enabled": False})
    assert on.features.store(on.stats.exchange) == "rocksdb"
    assert Settings().features.store(False) == "memory"
    chosen = on.replace(features={"profile_store": "sqlite"})
    assert chosen.features.store(True) == "sqlite"
    for store in ("rocksdb", "sqlite"):
        with pytest.raises(ConfigError, match=rf"^features.profile_store = '{store}' needs "
                                              r"stats.exchange = true"):
            Settings().replace(features={"profile_store": store})
    with pytest.raises(ConfigError, match=r"features\.profile_store"):
        load_settings(env={"FAIRSTREAM_FEATURES__PROFILE_STORE": "lmdb"})
    with pytest.raises(ConfigError, match=r"features\.profile_capacity must be > 0"):
        on.replace(features={"profile_capacity": 0})
