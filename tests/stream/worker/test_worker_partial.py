"""Two workers in one group without the statistics exchange, on the real broker: each owns
one of the two events partitions, so each holds part of the model. Neither may publish
it (servers would serve whichever part carried the higher version); each says so in its
metrics. Once one leaves, the other owns every partition again and publishes."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaConsumer, TopicPartition

from stream.kafka.producers import catalog_items, publish_catalog, publish_events, replay_events
from stream.kafka.topics import ensure_topics
from stream.worker import Worker, WorkerThread

pytestmark = [pytest.mark.broker, pytest.mark.model]

WAIT_S = 180.0


def wait_for(what, condition, runners):
    """Wait for a phase boundary: a condition that stays true once reached."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert all(r.is_alive() for r in runners), f"a worker died waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def policies_end(settings) -> int:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap,
                             enable_auto_commit=False)
    try:
        tp = TopicPartition(settings.topics.policies, 0)
        return consumer.end_offsets([tp])[tp]
    finally:
        consumer.close()


def value(worker, name):
    return worker.metrics.registry.get_sample_value(name) or 0.0


def test_a_worker_that_owns_part_of_the_stream_withholds_its_policy(
        make_settings, movielens, encoder, tmp_path):
    settings = make_settings(kafka={"events_partitions": 2}, policy={"publish_every_s": 0.5})
    ensure_topics(settings)
    publish_catalog(settings, catalog_items(movielens))
    events = list(replay_events(movielens, limit=600))
    workers = [Worker(settings.replace(worker={"checkpoint_path": str(tmp_path / f"w{i}.npz")}),
                      encoder=encoder) for i in range(2)]
    first = WorkerThread(workers[0]).start()
    wait_for("the first worker to own both partitions",
             lambda: workers[0]._assigned == {0, 1}, [first])
    assert value(workers[0], "fairstream_worker_partial_model") == 0
    second = WorkerThread(workers[1]).start()
    runners = [first, second]
    try:
        # Phase 1: the group has split the partitions; each worker knows it holds a part.
        wait_for("one partition each",
                 lambda: [len(w._assigned) for w in workers] == [1, 1], runners)
        assert all(value(w, "fairstream_worker_partial_model") == 1 for w in workers)
        before = policies_end(settings)

        # Phase 2: both learn their partitions' events; each publish that falls due is
        # withheld, so nothing reaches the policies topic.
        publish_events(settings, iter(events), progress=False)
        wait_for("a withheld publish in each worker", lambda: all(
            value(w, "fairstream_worker_publishes_withheld_total") >= 1 for w in workers),
            runners)
        assert sum(w.report.rows_learned for w in workers) > 0
        assert policies_end(settings) == before

        # Phase 3: the second worker leaves; the first owns both partitions again, is
        # whole, and publishes.
        second.stop(timeout_s=120)
        runners = [first]
        wait_for("the first worker to own both partitions again",
                 lambda: workers[0]._assigned == {0, 1}, runners)
        assert value(workers[0], "fairstream_worker_partial_model") == 0
        wait_for("a whole policy published", lambda: policies_end(settings) > before, runners)
    finally:
        for r in runners:
            r.stop(timeout_s=120)
