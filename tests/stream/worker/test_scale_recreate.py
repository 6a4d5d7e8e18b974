"""A worker container recreated without its checkpoint file resumes from Kafka alone:
its feature space from the latest published bundle, its statistics and user state from
fairstream.stats (docs/scaling.md), on the real broker."""

from __future__ import annotations

import itertools
import os

import pytest
from test_scale import (
    _bundles,
    _covers,
    _high,
    _load,
    _same_stats,
    _settings,
    _wait,
    reference_state,
)

from stream.events import CatalogItem
from stream.kafka.producers import publish_catalog, publish_events
from stream.worker import Worker, WorkerThread

pytestmark = [pytest.mark.broker, pytest.mark.model]


def test_a_worker_recreated_without_its_checkpoint_rebuilds_from_kafka(
        make_settings, movielens, encoder, tmp_path):
    settings = _settings(make_settings)
    settings = settings.replace(worker={"checkpoint_path": str(tmp_path / "w.npz")})
    events = _load(settings, movielens)
    cut = len(events) // 2
    publish_events(settings, iter(events[:cut]), progress=False)
    first = Worker(settings, encoder=encoder)
    running = WorkerThread(first).start()
    high1 = _high(events[:cut])
    _wait("the first container to cover phase 1", lambda: _covers(first.state.offsets, high1),
          running.is_alive)
    running.stop(timeout_s=120)
    before = first.state.policy.total_stats

    # A new image, a new container: no checkpoint file. Meanwhile the catalog grew, so a
    # fresh PCA projection would be another feature space than the group's.
    os.remove(settings.worker.checkpoint_path)
    os.remove(settings.worker.checkpoint_path + ".published")
    publish_catalog(settings, [CatalogItem(item_id=f"new-{i}", text=f"a film never seen {i}")
                               for i in range(25)])
    second = Worker(settings, encoder=encoder)
    running = WorkerThread(second).start()
    try:
        assert second.state.fmap.feature_space == first.state.fmap.feature_space
        assert _covers(second.state.offsets, high1)  # folded at start, before any fetch
        _same_stats(second.state.policy.total_stats, before)
        publish_events(settings, iter(events[cut:]), progress=False)
        high = _high(events)
        _wait("the second container to cover everything",
              lambda: _covers(second.state.offsets, high), running.is_alive)
    finally:
        running.stop(timeout_s=120)
    assert second.report.events == len(events) - cut  # nothing learnt twice
    ref = reference_state(settings, movielens, encoder, events).policy.total_stats
    _same_stats(second.state.policy.total_stats, ref)
    versions = [b.version for b in _bundles(settings)]
    assert all(x < y for x, y in itertools.pairwise(versions)), versions
