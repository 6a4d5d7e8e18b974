"""One fine-tune across workers (docs/scaling.md), on the real broker with real MovieLens
events: two workers with the statistics exchange and the fine-tune on. The publisher
trains on every partition's sample and announces an epoch; every partition re-bases;
after the drain every published bundle after the first switch is of the new feature
space, the two workers' statistics agree, and they equal one state's that learns the
same events and re-bases each partition at the offset its marker names."""

from __future__ import annotations

import itertools
import re
import signal
import time
import urllib.request

import pytest
from kafka import KafkaConsumer, TopicPartition

from learners import Adapter, FeatureMap
from stream.core.catalog import Catalog
from stream.core.checkpoint import read_checkpoint
from stream.core.delta import is_marker, load_marker
from stream.core.state import LearningState
from stream.events import compact
from stream.kafka.producers import catalog_items, publish_events
from stream.kafka.tail import read_to_end
from stream.privacy import Pseudonymizer
from stream.worker import Worker, WorkerThread
from tests.stream.worker.conftest import kill_left
from tests.stream.worker.test_scale import (
    PARTITIONS,
    _bundles,
    _checkpoint_offsets,
    _covers,
    _high,
    _load,
    _partition,
    _proc,
    _same_stats,
    _wait,
    _wait_for_log,
)

pytestmark = [pytest.mark.broker, pytest.mark.model]


def _settings(make_settings):
    return make_settings(
        kafka={"events_partitions": PARTITIONS},
        stats={"exchange": True, "emit_every_s": 0.5},
        policy={"publish_every_s": 0.5},
        worker={"checkpoint_every_s": 1.0},
        events={"attribution_window_s": 60.0},
        # One run: it starts once 1,300 rows are learnt or folded, on the union of the
        # samples (4 × 150 rows); the stream holds at most 2,400 rows (one per rating),
        # so no second.
        finetune={"enabled": True, "every_updates": 1300, "min_rows": 400, "steps": 40,
                  "buffer_capacity": 600, "drift_delta": 1e-12, "duty_cycle": 1.0})


def _markers(settings):
    """Every re-base marker on fairstream.stats, by partition."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap,
                             enable_auto_commit=False)
    tps = [TopicPartition(settings.topics.stats, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    out = [load_marker(r.value, key=settings.policy.signing_key.encode())
           for r in read_to_end(consumer, tps) if is_marker(r.headers)]
    consumer.close()
    return out


def test_two_workers_fine_tune_once_and_switch_together(make_settings, movielens, encoder,
                                                         tmp_path):
    settings = _settings(make_settings)
    edge = Pseudonymizer.from_settings(settings.privacy)
    events = [edge.event(e) for e in _load(settings, movielens)]
    publish_events(settings, iter(events), progress=False)
    high = _high(events)
    workers = [Worker(settings.replace(worker={"checkpoint_path": str(tmp_path / f"w{i}.npz")}),
                      encoder=encoder) for i in range(2)]
    runners = [WorkerThread(w).start() for w in workers]
    started = time.monotonic()
    try:
        # Phases: drained and every partition owned, then one epoch completed on both
        # (their last marker folded), then drained again (new-space deltas folded).
        _wait("2 workers to cover every partition",
              lambda: all(_covers(w.state.offsets, high) for w in workers)
              and sorted(p for w in workers for p in w._assigned) == list(range(PARTITIONS)),
              lambda: all(r.is_alive() for r in runners))
        _wait("both workers to switch to epoch 1",
              lambda: all(w.state.epoch == 1 and w.state.switch is None for w in workers),
              lambda: all(r.is_alive() for r in runners),
              detail=lambda: [(w.state.epoch, w.state.rebase_pending(),
                               w.finetune.summary()) for w in workers])
        _wait("both workers to fold each other's last deltas",
              lambda: all(_covers(w.state.offsets, high) for w in workers)
              and all(w.exchange is not None and w.metrics.stats_lag._value.get() == 0
                      for w in workers),
              lambda: all(r.is_alive() for r in runners))
        elapsed = time.monotonic() - started
        new_space = workers[0].state.fmap.feature_space
        _wait("the publisher's first bundle in the new space (flushed at a checkpoint)",
              lambda: any(b.feature_space == new_space for b in _bundles(settings)),
              lambda: all(r.is_alive() for r in runners))
        bundles = _bundles(settings)  # before a third worker publishes
        # A third worker without a checkpoint (a recreated replica) joins: it starts in
        # the latest bundle's space (epoch 1), folds the epoch-0 deltas without their
        # statistics and re-bases every partition at its marker, then takes partitions.
        fresh = Worker(settings.replace(
            worker={"checkpoint_path": str(tmp_path / "w2.npz")}), encoder=encoder)
        workers.append(fresh)
        runners.append(WorkerThread(fresh).start())
        _wait("the third worker to own partitions and cover every one",
              lambda: bool(fresh._assigned) and _covers(fresh.state.offsets, high)
              and sorted(p for w in workers for p in w._assigned) == list(range(PARTITIONS)),
              lambda: all(r.is_alive() for r in runners))
    finally:
        for r in runners:
            r.stop_event.set()
        for r in runners:
            r.stop(timeout_s=120)
    fresh = workers.pop()
    assert fresh.state.epoch == 1 and fresh.state.switch is None
    assert fresh.metrics.stats_rejected.labels(reason="feature_space")._value.get() == 0
    _same_stats(fresh.state.policy.total_stats, workers[0].state.policy.total_stats)

    # One run adopted in all (a worker that published before the second one joined may
    # have started one and cancelled it when partition 0 moved).
    assert sum(w.finetune.summary()["adopted"] for w in workers) == 1, \
        [w.finetune.summary() for w in workers]
    for w in workers:
        assert w.metrics.stats_epochs_completed._value.get() == 1
        assert w.metrics.stats_rebase_pending._value.get() == 0
    assert workers[1].state.fmap.feature_space == new_space == \
        workers[0].state.policy.feature_space
    # The workers' statistics agree (the final checkpoints at stop send nothing new:
    # every partition was covered and folded).
    _same_stats(workers[0].state.policy.total_stats, workers[1].state.policy.total_stats)

    assert fresh.state.fmap.feature_space == new_space
    # Every published bundle after the first switch is of the new feature space.
    versions = [b.version for b in bundles]
    assert all(x < y for x, y in itertools.pairwise(versions)), versions
    spaces = [b.feature_space for b in bundles]
    first = spaces.index(new_space)
    assert first > 0 and set(spaces[first:]) == {new_space}, spaces
    assert len(set(spaces[:first])) == 1  # before it: the group's first space only

    # One marker per partition, each naming the epoch and the trainer's adapter, and one
    # state doing the same switch at those offsets ends with the workers' model.
    markers = _markers(settings)
    assert sorted(m.partition for m in markers) == list(range(PARTITIONS))
    assert {(m.epoch, m.feature_space) for m in markers} == {(1, new_space)}
    at = {m.partition: m.at for m in markers}
    ref = _switched_reference(settings, movielens, encoder, events, at, markers[0].adapter)
    assert ref.fmap.feature_space == new_space
    for w in workers:
        _same_stats(w.state.policy.total_stats, ref.policy.total_stats)
        for p in range(PARTITIONS):  # the samples, identical everywhere
            assert w.state.samples[p].rows().row_ids == ref.samples[p].rows().row_ids
    print(f"drained and switched in {elapsed:.1f}s")


def _switched_reference(settings, movielens, encoder, events, at, adapter):
    """One state: every partition's events before its marker's offset, the epoch, every
    partition re-based at its offset, then the rest."""
    catalog = Catalog(encoder.dim)
    catalog.add(catalog_items(movielens), encoder)
    state = LearningState.fresh(settings, catalog)
    by_part = {p: [compact(e) for e in events if _partition(e) == p] for p in range(PARTITIONS)}
    for p, evs in by_part.items():
        for i in range(max(at[p], 0)):
            state.learn(state.observe_records(p, evs[i:i + 1], i + 1).closed)
    state.begin_epoch(1, FeatureMap(Adapter.from_bytes(adapter), dim=settings.features.dim))
    outcomes = [state.rebase(p, 1, at[p]) for p in range(PARTITIONS)]
    assert outcomes == ["rebased"] * (PARTITIONS - 1) + ["switched"]
    for p, evs in by_part.items():
        for i in range(max(at[p], 0), len(evs)):
            state.learn(state.observe_records(p, evs[i:i + 1], i + 1).closed)
    return state


def _metric(port, name) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not on /metrics")


def _last_assigned(path):
    found = re.findall(r"assigned \[([\d, ]+)\]", path.read_text())
    return [int(p) for p in found[-1].split(",")] if found else []


def test_a_switch_in_progress_survives_the_death_of_a_worker_that_had_not_cut(
        make_settings, movielens, encoder, tmp_path):
    """Phases, not timing: the trainer T (the owner of partition 0) starts its run only
    once the samples hold ``min_rows`` rows, which phase 2 brings. The other worker O is
    stopped (SIGSTOP) before phase 2, so it never reads the epoch; T cuts its own
    partitions (its /metrics shows 2 still to re-base), then O is killed, T takes O's
    partitions mid-switch, cuts them where O's last deltas end, and completes the switch.
    T ends with one state's model re-based at the markers' offsets."""
    settings = _settings(make_settings)
    edge = Pseudonymizer.from_settings(settings.privacy)
    events = [edge.event(e) for e in _load(settings, movielens)]
    phase1, phase2 = events[:300], events[300:]
    publish_events(settings, iter(phase1), progress=False)
    finetune = {"FAIRSTREAM_FINETUNE__ENABLED": "true",
                "FAIRSTREAM_FINETUNE__EVERY_UPDATES": "0",
                "FAIRSTREAM_FINETUNE__EVERY_S": "0.5",
                # phase 1 has 300 rows at most; phase 2 fills T's partitions' samples
                "FAIRSTREAM_FINETUNE__MIN_ROWS": "350",
                "FAIRSTREAM_FINETUNE__STEPS": "40",
                # as in the settings the reference is built with: 150 rows per partition
                "FAIRSTREAM_FINETUNE__BUFFER_CAPACITY": "600",
                "FAIRSTREAM_FINETUNE__DRIFT_DELTA": "1e-12",
                "FAIRSTREAM_EVENTS__ATTRIBUTION_WINDOW_S": "60"}
    paths = {n: tmp_path / f"{n}.npz" for n in "ab"}
    logs = {n: tmp_path / f"{n}.log" for n in "ab"}
    files = {n: open(logs[n], "w") for n in "ab"}  # noqa: SIM115
    procs = {}
    try:
        procs["a"] = _proc(settings, files["a"], paths["a"], **finetune)
        high1 = _high(phase1)
        _wait("A to cover phase 1", lambda: _covers(_checkpoint_offsets(paths["a"]), high1),
              lambda: procs["a"].poll() is None)
        procs["b"] = _proc(settings, files["b"], paths["b"], **finetune)
        both = lambda: all(p.poll() is None for p in procs.values())  # noqa: E731
        _wait("the two workers to split the partitions",
              lambda: len(_last_assigned(logs["b"])) == 2 and len(_last_assigned(logs["a"])) == 2
              and sorted(_last_assigned(logs["a"]) + _last_assigned(logs["b"]))
              == list(range(PARTITIONS)), both)
        t, o = ("a", "b") if 0 in _last_assigned(logs["a"]) else ("b", "a")
        _wait("both to hold phase 1 in their checkpoints",
              lambda: all(_covers(_checkpoint_offsets(paths[n]), high1) for n in "ab"), both)
        port = int(_wait_for_log(logs[t], r"metrics on :(\d+)/metrics", both))
        assert _metric(port, "fairstream_stats_epoch") == 0
        procs[o].send_signal(signal.SIGSTOP)  # it will not read the epoch
        publish_events(settings, iter(phase2), progress=False)
        _wait("T to cut its own partitions", lambda: _metric(
            port, "fairstream_stats_rebase_pending_partitions") == 2,
            lambda: procs[t].poll() is None)
        procs[o].send_signal(signal.SIGKILL)
        procs[o].wait()
        high = _high(events)
        _wait("T to take O's partitions, cut them and switch", lambda: _metric(
            port, "fairstream_stats_epochs_completed_total") == 1
            and _covers(_checkpoint_offsets(paths[t]), high), lambda: procs[t].poll() is None)
        assert _metric(port, "fairstream_stats_rebase_pending_partitions") == 0
        procs[t].send_signal(signal.SIGTERM)
        assert procs[t].wait(timeout=120) == 0, logs[t].read_text()[-3000:]
    finally:
        kill_left(procs.values())
        for f in files.values():
            f.close()
    assert not re.search(r"epoch 1: ", logs[o].read_text())  # O never saw the epoch
    markers = _markers(settings)
    assert sorted(m.partition for m in markers) == list(range(PARTITIONS))
    assert len({m.source for m in markers}) == 1  # all four cut by T
    at = {m.partition: m.at for m in markers}
    ref = _switched_reference(settings, movielens, encoder, events, at, markers[0].adapter)
    state = LearningState.from_checkpoint(settings, ref.catalog, read_checkpoint(paths[t]))
    assert state.epoch == 1 and state.switch is None
    assert state.fmap.feature_space == ref.fmap.feature_space == markers[0].feature_space
    _same_stats(state.policy.total_stats, ref.policy.total_stats)
    spaces = [b.feature_space for b in _bundles(settings)]
    first = spaces.index(ref.fmap.feature_space)
    assert set(spaces[first:]) == {ref.fmap.feature_space}, spaces
