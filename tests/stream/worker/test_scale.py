"""Several workers, one policy (docs/scaling.md), on the real broker with real MovieLens
events: 1, 2 and 4 workers end with one worker's statistics; a worker killed mid-stream
is replaced from its last delta; a worker that joins mid-stream takes its partitions
with their state."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import time

import msgspec
import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.partitioner.default import murmur2

from stream.core.bundle import load_bundle
from stream.core.catalog import Catalog
from stream.core.checkpoint import read_checkpoint
from stream.core.state import LearningState
from stream.events import Impression
from stream.kafka.producers import catalog_items, publish_catalog, publish_events, replay_events
from stream.kafka.profile_changelog import ProfileChangelog
from stream.kafka.serving_profiles import read_serving_profiles
from stream.kafka.topics import ensure_topics
from stream.metrics import Metrics
from stream.settings import settings_env
from stream.worker import Worker, WorkerThread
from stream.worker.experiments import ExperimentResultsRoom
from tests.stream.worker.conftest import handled, kill_left

pytestmark = [pytest.mark.broker, pytest.mark.model]

PARTITIONS = 4
N_RATINGS = 2400


def _settings(make_settings, **worker):
    return make_settings(kafka={"events_partitions": PARTITIONS},
                         stats={"exchange": True, "emit_every_s": 0.5},
                         policy={"publish_every_s": 0.5},
                         worker={"checkpoint_every_s": 1.0, **worker})


def _partition(event) -> int:
    return (murmur2(event.user_id.encode()) & 0x7FFFFFFF) % PARTITIONS


def _load(settings, movielens):
    ensure_topics(settings)
    publish_catalog(settings, catalog_items(movielens))
    return list(replay_events(movielens, limit=N_RATINGS))


EXPERIMENT = {"name": "e", "arms": [{"name": "control", "share": 0.5},
                                    {"name": "b", "share": 0.5}]}


def _in_experiment(events):
    """The impressions as a two-arm experiment's servers log them (sticky by user)."""
    return [msgspec.structs.replace(e, experiment="e",
                                    arm="b" if murmur2(e.user_id.encode()) % 2 else "control")
            if isinstance(e, Impression) else e for e in events]


def _same_results(a, b):
    """Two workers' experiment results: per arm, the same impressions of the same users
    with the same rewards, user groups and exposure (float sums to 1e-9)."""
    assert a.arms.keys() == b.arms.keys()
    for arm in a.arms:
        x, y = a.arms[arm], b.arms[arm]
        assert x.reward.n == y.reward.n > 0 and x.shown == y.shown
        assert x.reward._per_user.keys() == y.reward._per_user.keys()
        for user, (n, total) in x.reward._per_user.items():
            assert y.reward._per_user[user] == pytest.approx([n, total], rel=1e-9)
        got, want = x.to_dict(), y.to_dict()
        for key in ("reward", "exposure", "merit"):
            assert got[key] == pytest.approx(want[key], rel=1e-9), (arm, key)
        assert got["by_user_group"].keys() == want["by_user_group"].keys()
        for label, moments in got["by_user_group"].items():
            assert moments == pytest.approx(want["by_user_group"][label], rel=1e-9)


def _high(events) -> dict[int, int]:
    """Each partition's end offset once ``events`` are on it (a fresh topic, one record
    each; Tansu's ListOffsets answers a batch's base offset, so it is not asked)."""
    high = dict.fromkeys(range(PARTITIONS), 0)
    for event in events:
        high[_partition(event)] += 1
    return high


WAIT_S = 240.0


def _wait(what, condition, alive=lambda: True, timeout=WAIT_S, detail=lambda: ""):
    """Wait for a phase boundary (a condition that stays true once reached)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert alive(), f"a worker died waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {detail()}"
        time.sleep(0.1)


def _covers(offsets, high) -> bool:
    return all(offsets.get(p) == high[p] for p in range(PARTITIONS) if high[p])


def _same_stats(a, b, rtol=1e-9):
    """A and b (the raw statistics, so A = λI + XᵀX) and every item's block agree."""
    assert a.n == b.n > 0
    np.testing.assert_allclose(a.xtx, b.xtx, rtol=rtol, atol=1e-9)
    np.testing.assert_allclose(a.xty, b.xty, rtol=rtol, atol=1e-9)
    assert a.allclose(b, rtol=rtol, atol=1e-9)


def _bundles(settings):
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap,
                             enable_auto_commit=False)
    tp = TopicPartition(settings.topics.policies, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    end = consumer.end_offsets([tp])[tp]
    out = []
    while consumer.position(tp) < end:
        for records in consumer.poll(500).values():
            out += [load_bundle(r.value, key=settings.policy.signing_key.encode(),
                                dim=settings.features.dim) for r in records]
    consumer.close()
    return out


def _run_threads(settings, encoder, n, tmp_path, events):
    workers = [Worker(settings.replace(worker={"checkpoint_path": str(tmp_path / f"w{i}.npz")}),
                      encoder=encoder) for i in range(n)]
    runners = [WorkerThread(w).start() for w in workers]
    high = _high(events)
    try:
        # Drained, and every partition owned by one worker (a rebalance in progress
        # has given partitions up without their next owner having restored them yet).
        _wait(f"{n} workers to cover every partition",
              lambda: all(_covers(w.state.offsets, high) for w in workers)
              and sorted(p for w in workers for p in w._assigned) == list(range(PARTITIONS)),
              lambda: all(r.is_alive() for r in runners),
              detail=lambda: (high, [(dict(w.state.offsets), sorted(w._assigned))
                                     for w in workers]))
    finally:
        for r in runners:
            r.stop_event.set()
        for r in runners:
            r.stop(timeout_s=120)
    return workers


def test_1_2_and_4_workers_end_with_one_workers_statistics(make_settings, movielens, encoder,
                                                          tmp_path):
    """... and with one worker's experiment results: a two-arm experiment runs, and each
    worker holds every partition's counts, not only its own."""
    results, serving = {}, {}
    for n in (1, 2, 4):
        # With a running experiment: each worker's results are the group's too.
        settings = _settings(make_settings).replace(experiment=EXPERIMENT)
        events = _in_experiment(_load(settings, movielens))
        publish_events(settings, iter(events), progress=False)
        workers = _run_threads(settings, encoder, n, tmp_path / str(n), events)
        results[n] = workers
        for w in workers:  # each worker's checkpoint holds the merged statistics
            ck = read_checkpoint(w.settings.worker.checkpoint_path)
            assert _covers(ck.offsets, _high(events))
        bundles = _bundles(settings)
        versions = [b.version for b in bundles]
        assert len(versions) >= 2 and all(a < b for a, b in itertools.pairwise(versions))
        # exactly one publisher at a time: every bundle is the merged one, the last
        # one is every worker's final state
        last = bundles[-1].policy
        ref = workers[0].state.policy
        np.testing.assert_allclose(last._beta, ref.beta, rtol=1e-7, atol=1e-10)
        results[n] = (workers, last)
        serving[n] = read_serving_profiles(settings)
    ref = results[1][0][0].state.policy.total_stats
    for n in (2, 4):
        workers, last = results[n]
        for w in workers:
            _same_stats(w.state.policy.total_stats, ref)
            _same_results(w.experiments.results, results[1][0][0].experiments.results)
        # Profiles are partition-owned: each worker holds only its own partitions' users,
        # and together they hold one worker's.
        everyone = set(results[1][0][0].state.profiles.state()["user_ids"])
        held = [set(w.state.profiles.entries(list(everyone))[0]) for w in workers]
        assert set().union(*held) == everyone, [
            (sorted(w._assigned), len(h)) for w, h in zip(workers, held, strict=True)]
        assert sum(map(len, held)) == len(set().union(*held))
        np.testing.assert_allclose(last._beta, results[1][1]._beta, rtol=1e-7, atol=1e-10)
        # Each owner writes its partitions' users' serving profiles: the topic ends with
        # what one worker wrote, user for user.
        got = read_serving_profiles(workers[0].settings)
        assert got.keys() == serving[1].keys() and len(got) > 0
        for user, p in serving[1].items():
            np.testing.assert_allclose(got[user].mean, p.mean, rtol=1e-6, atol=1e-7)
            assert got[user].weight == pytest.approx(p.weight, rel=1e-9)


def test_profiles_beyond_memory_spill_to_disk_and_both_workers_stay_exact(
        make_settings, movielens, encoder, tmp_path):
    """Four profiles in memory per worker, far fewer than the users: the rest are on disk
    (RocksDB, the default with the exchange), restored into it on assignment, and the
    statistics and every profile equal one worker's with every profile in memory."""
    settings = _settings(make_settings).replace(features={"profile_capacity": 4})
    assert settings.features.store(settings.stats.exchange) == "rocksdb"
    events = _load(settings, movielens)
    publish_events(settings, iter(events), progress=False)
    workers = _run_threads(settings, encoder, 2, tmp_path, events)
    ref = reference_state(settings.replace(features={"profile_capacity": 100_000}),
                          movielens, encoder, events)
    for w in workers:
        _same_stats(w.state.policy.total_stats, ref.policy.total_stats)
        assert w.state.profiles.in_memory <= 4
        # /metrics as of the worker's last checkpoint, its final one
        held = w.metrics.profiles_held
        assert held.labels(where="memory")._value.get() == w.state.profiles.in_memory
        assert held.labels(where="disk")._value.get() == \
            len(w.state.profiles) - w.state.profiles.in_memory
        assert w.metrics.profile_spills._value.get() == w.state.profiles.spills
    assert sum(w.state.profiles.spills for w in workers) > 0
    expect = ref.profiles.state()
    assert len(expect["user_ids"]) > 8 * len(workers)
    held = [w.state.profiles.entries(expect["user_ids"]) for w in workers]
    users = [u for h in held for u in h[0]]
    assert sorted(users) == sorted(expect["user_ids"])  # each user on one worker only
    order = {u: i for i, u in enumerate(expect["user_ids"])}
    for ids, means, weights, seen in held:
        rows = [order[u] for u in ids]
        np.testing.assert_array_equal(means, expect["means"][rows])
        np.testing.assert_array_equal(weights, expect["weights"][rows])
        np.testing.assert_array_equal(seen, expect["last_seen"][rows])


def reference_state(settings, movielens, encoder, events, room=None):
    """One learning state fed every event in its partition's order: what one worker ends
    with (tests/stream/worker/test_worker.py checks that a worker does); ``room`` (an
    ExperimentResultsRoom) counts what it closes, as a worker's does."""
    catalog = Catalog(encoder.dim)
    catalog.add(catalog_items(movielens), encoder)
    state = LearningState.fresh(settings, catalog)
    seen = set()
    for event in events:
        if event.event_id not in seen:
            seen.add(event.event_id)
            closed = state.observe(event, _partition(event))
            state.learn(closed)
            if room is not None:
                room.observed(closed, catalog)
    return state


def _checkpointed_results(settings, ck):
    """The experiment results a checkpoint holds (its ``experiment`` part)."""
    room = ExperimentResultsRoom(settings, Metrics())
    prefix = "part.experiment."
    room.load(ck.header["parts"]["experiment"],
              {k.removeprefix(prefix): v for k, v in ck.arrays.items() if k.startswith(prefix)})
    return room.results


def test_a_worker_that_joins_mid_stream_takes_partitions_with_their_state(
        make_settings, movielens, encoder, tmp_path):
    settings = _settings(make_settings)
    events = _load(settings, movielens)
    cut = len(events) // 2
    publish_events(settings, iter(events[:cut]), progress=False)
    workers = [Worker(settings.replace(worker={"checkpoint_path": str(tmp_path / f"w{i}.npz")}),
                      encoder=encoder) for i in range(3)]
    runners = [WorkerThread(w) for w in workers]
    try:
        for r in runners[:2]:
            r.start()
        high = _high(events[:cut])
        _wait("two workers to cover phase 1",
              lambda: all(_covers(w.state.offsets, high) for w in workers[:2]),
              lambda: all(r.is_alive() for r in runners[:2]))
        runners[2].start()
        _wait("the third worker to own partitions", lambda: bool(workers[2]._assigned),
              lambda: all(r.is_alive() for r in runners))
        publish_events(settings, iter(events[cut:]), progress=False)
        high = _high(events)
        _wait("three workers to cover everything",
              lambda: all(_covers(w.state.offsets, high) for w in workers),
              lambda: all(r.is_alive() for r in runners),
              detail=lambda: (high, [dict(w.state.offsets) for w in workers]))
    finally:
        for r in runners:
            r.stop_event.set()
        for r in runners:
            if r.is_alive():
                r.stop(timeout_s=120)
    # The newcomer learnt phase-2 events of its own partitions, from the state it read.
    assert workers[2].report.rows_learned > 0
    assert workers[2].metrics.stats_folded._value.get() > 0
    ref = reference_state(settings, movielens, encoder, events).policy.total_stats
    for w in workers:
        _same_stats(w.state.policy.total_stats, ref)


def _proc(settings, log, checkpoint_path, **env):
    base = {**os.environ,
            "FAIRSTREAM_KAFKA__BOOTSTRAP": settings.kafka.bootstrap,
            "FAIRSTREAM_KAFKA__GROUP_ID": settings.kafka.group_id,
            "FAIRSTREAM_KAFKA__EVENTS_PARTITIONS": str(PARTITIONS),
            "FAIRSTREAM_KAFKA__SESSION_TIMEOUT_MS": str(settings.kafka.session_timeout_ms),
            "FAIRSTREAM_TOPICS__PREFIX": settings.topics.prefix,
            "FAIRSTREAM_DATA__CACHE_DIR": settings.data.cache_dir,
            "FAIRSTREAM_MODEL__DEVICE": "cpu",
            "FAIRSTREAM_MODEL__EMBEDDING_CACHE": settings.model.embedding_cache,
            "FAIRSTREAM_FINETUNE__ENABLED": "false",
            "FAIRSTREAM_STATS__EXCHANGE": "true",
            "FAIRSTREAM_POLICY__PUBLISH_EVERY_S": "0.5",
            "FAIRSTREAM_WORKER__CHECKPOINT_PATH": str(checkpoint_path),
            "FAIRSTREAM_WORKER__CHECKPOINT_EVERY_S": "1.0",
            "FAIRSTREAM_WORKER__POLL_MAX_RECORDS": "100",
            "FAIRSTREAM_WORKER__METRICS_PORT": "0",
            "FAIRSTREAM_STATS__EMIT_EVERY_S": "0.5",
            # the test's own key: deltas are signed with it, and `fairstream worker`
            # refuses the built-in one
            "FAIRSTREAM_POLICY__SIGNING_KEY": settings.policy.signing_key,
            **env}
    # The experiment, when the test runs one (the settings' environment form of it).
    base |= {k: v for k, v in settings_env(settings, base={}).items()
             if k.startswith("FAIRSTREAM_EXPERIMENT__")}
    return subprocess.Popen([sys.executable, "-m", "stream.cli", "worker"], stdout=log,
                            stderr=subprocess.STDOUT, env=base)


def _checkpoint_offsets(path) -> dict[int, int]:
    return read_checkpoint(path).offsets if os.path.exists(path) else {}



def test_a_worker_killed_mid_stream_is_replaced_from_its_last_delta(
        make_settings, movielens, encoder, tmp_path):
    """Phases, not timing, choose where the kill lands.

    A learns phase 1 alone. B joins and takes two partitions from A's deltas (A sends
    them at its revocation). B's only trigger for sending is its checkpoint, due after
    exactly its share of phase 2a (K records on every partition, so 2K): it checkpoints
    and sends once. It learns its share of phase 2b (under 2K: no checkpoint), and once
    /metrics shows that handled it is SIGKILLed, never restarted. A takes B's partitions
    where B's delta ended, with their open impressions and profiles from it, learns B's
    share of 2b again, then phase 3, and ends with one worker's statistics and, of the
    experiment that runs meanwhile, one worker's results: B's counts came with its delta,
    and what B counted after it is counted again by A, once."""
    settings = _settings(make_settings).replace(experiment=EXPERIMENT)
    events = _in_experiment(_load(settings, movielens))
    cut1 = len(events) // 3
    rest = {p: [e for e in events[cut1:] if _partition(e) == p] for p in range(PARTITIONS)}
    k = min(len(v) for v in rest.values()) // 3
    phase2a = [e for p in range(PARTITIONS) for e in rest[p][:k]]
    phase2b = [e for p in range(PARTITIONS) for e in rest[p][k:k + k // 2]]
    phase3 = [e for p in range(PARTITIONS) for e in rest[p][k + k // 2:]]
    publish_events(settings, iter(events[:cut1]), progress=False)
    paths = {name: tmp_path / f"{name}.npz" for name in "ab"}
    logs = {name: tmp_path / f"{name}.log" for name in "ab"}
    files = {name: open(logs[name], "w") for name in "ab"}  # noqa: SIM115
    procs = {}
    try:
        procs["a"] = _proc(settings, files["a"], paths["a"])
        a_alive = lambda: procs["a"].poll() is None  # noqa: E731
        high1 = _high(events[:cut1])
        _wait("A to cover phase 1", lambda: _covers(_checkpoint_offsets(paths["a"]), high1),
              a_alive)
        procs["b"] = _proc(settings, files["b"], paths["b"],
                           FAIRSTREAM_STATS__EMIT_EVERY_S="3600",
                           FAIRSTREAM_WORKER__CHECKPOINT_EVERY_S="3600",
                           FAIRSTREAM_WORKER__CHECKPOINT_EVERY_EVENTS=str(2 * k))
        both = lambda: a_alive() and procs["b"].poll() is None  # noqa: E731
        owned = _wait_for_log(logs["b"], r"assigned \[([\d, ]+)\]", both)
        b_parts = [int(p) for p in owned.split(",")]
        assert len(b_parts) == 2
        port = int(_wait_for_log(logs["b"], r"metrics on :(\d+)/metrics", both))

        publish_events(settings, iter(phase2a), progress=False)
        high2a = _high(events[:cut1] + phase2a)
        _wait("B's checkpoint after phase 2a", lambda: all(
            _checkpoint_offsets(paths["b"]).get(p) == high2a[p] for p in b_parts), both)
        publish_events(settings, iter(phase2b), progress=False)
        b_share = 2 * k + sum(1 for e in phase2b if _partition(e) in b_parts)
        _wait("B to handle its share of phase 2b", lambda: handled(port) == b_share, both)
        procs["b"].send_signal(signal.SIGKILL)
        procs["b"].wait()
        b_ck = _checkpoint_offsets(paths["b"])
        assert all(b_ck[p] == high2a[p] for p in b_parts)  # 2b learnt, never sent

        high2 = _high(events[:cut1] + phase2a + phase2b)
        _wait("A to cover phase 2", lambda: _covers(_checkpoint_offsets(paths["a"]), high2),
              a_alive)
        publish_events(settings, iter(phase3), progress=False)
        high = _high(events)
        _wait("A to cover everything",
              lambda: _covers(_checkpoint_offsets(paths["a"]), high), a_alive)
        procs["a"].send_signal(signal.SIGTERM)
        assert procs["a"].wait(timeout=120) == 0, logs["a"].read_text()
    finally:
        kill_left(procs.values())
        for f in files.values():
            f.close()
    ref_room = ExperimentResultsRoom(settings, Metrics())
    ref = reference_state(settings, movielens, encoder, events, ref_room)
    ck = read_checkpoint(paths["a"])
    state = LearningState.from_checkpoint(settings, ref.catalog, ck)
    _same_stats(state.policy.total_stats, ref.policy.total_stats)
    _same_results(_checkpointed_results(settings, ck), ref_room.results)
    assert len(state.joiner) == len(ref.joiner)
    # Profiles are not in the checkpoint: the changelog (and the deltas after it) hold
    # them, and restore every partition's users as one worker has them.
    assert not state.profiles
    changelog = ProfileChangelog(settings)
    try:
        for p in range(PARTITIONS):
            changelog.restore(state.profiles, p, ck.offsets[p])
    finally:
        changelog.close()
    pa, pb = state.profiles.state(), ref.profiles.state()
    assert sorted(pa["user_ids"]) == sorted(pb["user_ids"])
    order = {u: i for i, u in enumerate(pb["user_ids"])}
    np.testing.assert_allclose(pa["means"], pb["means"][[order[u] for u in pa["user_ids"]]],
                               rtol=1e-6, atol=1e-7)
    versions = [b.version for b in _bundles(settings)]
    assert all(x < y for x, y in itertools.pairwise(versions)), versions


def _wait_for_log(path, pattern, alive):
    found = []

    def seen():
        m = re.search(pattern, path.read_text())
        if m:
            found.append(m.group(1))
        return bool(m)

    _wait(f"{pattern!r} in {path.name}", seen, alive)
    return found[-1]
