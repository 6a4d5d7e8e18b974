"""Checkpoint offsets the broker no longer holds: a broker restarted without its data.

The embedded broker keeps its log in memory, so a restart leaves it empty: a worker
whose checkpoint is from before the restart finds its offsets beyond the new high-water
marks. Each test runs a private broker (the session's one is never restarted) on a fixed
port, so clients reconnect to the same address.
"""

from __future__ import annotations

import time

import pytest
from kafka.partitioner.default import murmur2

from stream.core.catalog import Catalog
from stream.core.checkpoint import read_checkpoint
from stream.core.state import LearningState
from stream.exceptions import OffsetOutOfRange
from stream.kafka.broker import EmbeddedBroker
from stream.kafka.producers import catalog_items, publish_catalog, publish_events, replay_events
from stream.kafka.topics import ensure_topics
from stream.worker import Worker, WorkerThread

pytestmark = [pytest.mark.broker, pytest.mark.model]

BEFORE, AFTER = 600, 120  # events on the broker before its restart, and after it


@pytest.fixture
def private_broker(tmp_path):
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as b:
        yield b


def _run_until_handled(settings, encoder, n: int) -> Worker:
    """Run a worker until it has handled ``n`` records (a count that, once reached, stays
    reached), then stop it: the stop writes the final checkpoint."""
    worker = Worker(settings, encoder=encoder)
    running = WorkerThread(worker).start()
    deadline = time.monotonic() + 120
    while worker.report.events < n:
        assert running.is_alive() and time.monotonic() < deadline, worker.report
        time.sleep(0.05)
    running.stop(timeout_s=60)
    return worker


@pytest.fixture
def restarted(private_broker, make_settings, movielens, encoder):
    """A worker's checkpoint covering BEFORE events, then the broker restarted empty and
    given AFTER new events: every partition's checkpoint offset is beyond its new
    high-water mark."""
    settings = make_settings(kafka={"bootstrap": private_broker.bootstrap,
                                    "events_partitions": 2, "group_id": "restart-workers",
                                    "session_timeout_ms": 6000})
    events = list(replay_events(movielens, limit=BEFORE + AFTER))[:BEFORE + AFTER]
    ensure_topics(settings)
    publish_catalog(settings, catalog_items(movielens))
    publish_events(settings, iter(events[:BEFORE]), progress=False)
    _run_until_handled(settings, encoder, BEFORE)
    before = read_checkpoint(settings.worker.checkpoint_path).offsets
    assert sum(before.values()) == BEFORE

    private_broker.stop()
    private_broker.start()  # same port, empty log
    ensure_topics(settings)
    publish_catalog(settings, catalog_items(movielens))
    publish_events(settings, iter(events[BEFORE:]), progress=False)
    return settings, events, before


def _ranges_named(text: str, settings, before: dict[int, int]) -> None:
    assert "\n" not in text
    for p, offset in before.items():
        assert f"{settings.topics.events} partition {p}: checkpoint offset {offset} " \
               "is outside the broker's range 0.." in text
    assert 'worker.offset_out_of_range = "earliest"' in text


def test_a_checkpoint_beyond_a_restarted_broker_stops_the_worker_with_a_clear_error(
        restarted, encoder):
    settings, _events, before = restarted
    worker = Worker(settings, encoder=encoder)
    running = WorkerThread(worker).start()
    deadline = time.monotonic() + 120
    while running.is_alive():  # it stops on its first assignment: a phase, not a race
        assert time.monotonic() < deadline, "the worker kept running on a lost log"
        time.sleep(0.05)
    with pytest.raises(OffsetOutOfRange) as info:
        running.check()
    _ranges_named(str(info.value), settings, before)
    assert worker.report.events == 0  # nothing learnt from the new log
    assert read_checkpoint(settings.worker.checkpoint_path).offsets == before  # untouched
    for p in before:
        assert worker.metrics.registry.get_sample_value(
            "fairstream_worker_offsets_out_of_range_total", {"partition": str(p)}) == 1.0


def test_earliest_resumes_from_the_log_start_and_learns_all_the_new_broker_holds(
        restarted, movielens, encoder, caplog, same_policy):
    settings, events, before = restarted
    settings = settings.replace(worker={"offset_out_of_range": "earliest"})
    ref_catalog = Catalog(encoder.dim)
    ref_catalog.add(catalog_items(movielens), encoder)
    ref = LearningState.from_checkpoint(settings, ref_catalog,
                                        read_checkpoint(settings.worker.checkpoint_path))
    learnt_before = ref.policy.n_updates
    worker = _run_until_handled(settings, encoder, AFTER)

    assert worker.report.events == AFTER
    after = read_checkpoint(settings.worker.checkpoint_path).offsets
    assert sum(after.values()) == AFTER  # from offset 0 of each partition to its end
    for p in before:
        assert worker.metrics.registry.get_sample_value(
            "fairstream_worker_offsets_out_of_range_total", {"partition": str(p)}) == 1.0
    assert any("resuming from the log start" in r.getMessage() for r in caplog.records)

    # What it learnt: the checkpoint's state, then every new event, in partition order.
    for event in events[BEFORE:]:
        p = (murmur2(event.user_id.encode()) & 0x7FFFFFFF) % settings.kafka.events_partitions
        ref.learn(ref.observe(event, p))
    assert worker.state.policy.n_updates > learnt_before
    same_policy(worker.state.policy, ref.policy)
    assert len(worker.state.joiner) == len(ref.joiner)
