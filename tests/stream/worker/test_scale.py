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
import urllib.request

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.partitioner.default import murmur2

from stream.core.bundle import load_bundle
from stream.core.catalog import Catalog
from stream.core.checkpoint import read_checkpoint
from stream.core.state import LearningState
from stream.kafka.producers import catalog_items, publish_catalog, publish_events, replay_events
from stream.kafka.topics import ensure_topics
from stream.worker import Worker, WorkerThread

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


def _high(events) -> dict[int, int]:
    """Each partition's end offset once ``events`` are on it (a fresh topic, one record
    each; Tansu's ListOffsets answers a batch's base offset, so it is not asked)."""
    high = dict.fromkeys(range(PARTITIONS), 0)
    for event in events:
        high[_partition(event)] += 1
    return high


def _wait(what, condition, alive=lambda: True, timeout=float(os.environ.get('SCALE_WAIT_S', 240)), detail=lambda: ""):
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
        _wait(f"{n} workers to cover every partition",
              lambda: all(_covers(w.state.offsets, high) for w in workers),
              lambda: all(r.is_alive() for r in runners),
              detail=lambda: (high, [dict(w.state.offsets) for w in workers]))
    finally:
        for r in runners:
            r.stop_event.set()
        for r in runners:
            r.stop(timeout_s=120)
    return workers


def test_1_2_and_4_workers_end_with_one_workers_statistics(make_settings, movielens, encoder,
                                                          tmp_path):
    results = {}
    for n in (1, 2, 4):
        settings = _settings(make_settings)
        events = _load(settings, movielens)
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
    ref = results[1][0][0].state.policy.total_stats
    for n in (2, 4):
        workers, last = results[n]
        for w in workers:
            _same_stats(w.state.policy.total_stats, ref)
        np.testing.assert_allclose(last._beta, results[1][1]._beta, rtol=1e-7, atol=1e-10)
