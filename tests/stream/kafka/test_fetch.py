"""The worker's fetch process on the real broker: the message protocol, rebalances as
round trips, commits, and failures that surface as a clear FetchError."""

from __future__ import annotations

import contextlib
import signal
import time

import pytest
from kafka import KafkaConsumer, TopicPartition

from stream.events import Click, EventCodec, Feedback, Impression, Shown
from stream.exceptions import FetchError
from stream.kafka.fetch import FetchProcess
from stream.kafka.producers import make_producer, publish_events, replay_events
from stream.kafka.topics import ensure_topics
from stream.kafka.wire import Ack, Assigned, Commit, Records, Revoked, Seek
from stream.sim.demo import MALFORMED

pytestmark = pytest.mark.broker


def receive_until(fetch, kind, timeout_s=60.0):
    """Messages up to and including the first of ``kind`` (answering nothing)."""
    seen, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = fetch.receive(timeout_s=0.5)
        if message is not None:
            seen.append(message)
            if isinstance(message, kind):
                return seen
    raise AssertionError(f"no {kind.__name__} in {timeout_s}s; got {[type(m) for m in seen]}")


def drain(fetch, expected, timeout_s=60.0):
    """Records messages until ``expected`` records have come; returns them by partition."""
    got: dict[int, list] = {}
    n, deadline = 0, time.monotonic() + timeout_s
    while n < expected and time.monotonic() < deadline:
        message = fetch.receive(timeout_s=0.5)
        assert not isinstance(message, Assigned | Revoked), "unexpected rebalance"
        if isinstance(message, Records):
            for chunk in message.chunks:
                got.setdefault(chunk.partition, []).append(chunk)
                n += len(chunk.offsets) + len(chunk.rejected)
    assert n == expected, f"{n} of {expected} records"
    return got


@contextlib.contextmanager
def joined(settings, seek=None):
    """A fetch process past its first assignment (answered with ``seek``), closed after."""
    fetch = FetchProcess(settings)
    fetch.start()
    try:
        assigned = receive_until(fetch, Assigned)[-1]
        fetch.send(Seek(seek or {}))
        yield fetch, assigned
    finally:
        fetch.close()


def fail_within(fetch, match, timeout_s=50.0):
    """Receive until the FetchError matching ``match``."""
    with pytest.raises(FetchError, match=match):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            fetch.receive(timeout_s=0.5)


@pytest.fixture
def stream_settings(make_settings, movielens):
    settings = make_settings()
    ensure_topics(settings)
    events = list(replay_events(movielens, limit=200))
    publish_events(settings, iter(events), progress=False)
    producer = make_producer(settings)
    for value in MALFORMED.values():
        producer.send(settings.topics.events, key=b"bad", value=value, partition=0)
    producer.flush()
    producer.close()
    return settings, len(events)


def test_seek_answer_positions_the_child_and_records_come_validated(stream_settings):
    settings, n_events = stream_settings
    # Skip partition 1's first 10 records, as a checkpoint would.
    with joined(settings, seek={1: 10}) as (fetch, assigned):
        assert assigned.partitions == [0, 1]
        chunks = drain(fetch, n_events + len(MALFORMED) - 10)
        first = {p: cs[0].offsets[0] if cs[0].offsets else cs[0].rejected[0].offset
                 for p, cs in chunks.items()}
        assert first == {0: 0, 1: 10}
        for cs in chunks.values():  # offsets strictly increase, next_offset follows the last
            offsets = [o for c in cs for o in (*c.offsets, *(r.offset for r in c.rejected))]
            assert sorted(offsets) == list(range(offsets[0], offsets[0] + len(offsets)))
            assert cs[-1].next_offset == max(offsets) + 1
        fetch.send(Commit({0: 5, 1: 12}))
    # The commit sent just before the close lands before the child leaves the group.
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap,
                             group_id=settings.kafka.group_id, enable_auto_commit=False)
    try:
        committed = {p: consumer.committed(TopicPartition(settings.topics.events, p))
                     for p in (0, 1)}
    finally:
        consumer.close()
    assert committed == {0: 5, 1: 12}


def test_rejected_records_keep_their_bytes_and_reason(stream_settings):
    settings, n_events = stream_settings
    with joined(settings) as (fetch, _):
        chunks = drain(fetch, n_events + len(MALFORMED))
    rejected = {r.value: r for c in chunks[0] for r in c.rejected}
    valid = {v: k for c in chunks[0] for k, v in zip(c.keys, c.values, strict=True)}
    for reason, value in MALFORMED.items():
        if reason == "unknown_item":  # the worker checks its catalog
            assert valid[value] == b"bad" and value not in rejected
            continue
        assert rejected[value].reason == reason
        assert rejected[value].key == b"bad" and rejected[value].detail
    assert len(rejected) == len(MALFORMED) - 1
    # Valid records travel decoded, field for field what their raw bytes say.
    codec = EventCodec()
    n_valid = 0
    for c in (c for cs in chunks.values() for c in cs):
        for value, wire in zip(c.values, c.events, strict=True):
            event = codec.decode(value)
            assert (wire.event_id, wire.request_id, wire.user_id, wire.ts) == (
                event.event_id, event.request_id, event.user_id, event.ts)
            if isinstance(event, Impression):
                assert isinstance(wire, Shown)
                assert (wire.items, wire.propensities, wire.user) == (
                    event.items, event.propensities, event.user)
            else:
                assert isinstance(wire, Feedback) and wire.item_id == event.item_id
                assert wire.kind == ("click" if isinstance(event, Click) else "purchase")
            n_valid += 1
    assert n_valid == n_events + 1  # the unknown-item message is valid here


def test_a_second_member_makes_the_first_answer_a_revoke_before_the_split(stream_settings):
    settings, _ = stream_settings
    first, second = FetchProcess(settings), FetchProcess(settings)
    first.start()
    try:
        receive_until(first, Assigned)
        first.send(Seek({}))
        second.start()
        # The first member is asked before it loses anything, and the group waits for it.
        revoked = receive_until(first, Revoked, timeout_s=90)[-1]
        assert revoked.partitions == [0, 1]
        first.send(Ack())
        mine = receive_until(first, Assigned, timeout_s=90)[-1].partitions
        first.send(Seek({}))
        theirs = receive_until(second, Assigned, timeout_s=90)[-1].partitions
        second.send(Seek({}))
        assert sorted(mine + theirs) == [0, 1] and len(mine) == len(theirs) == 1
    finally:
        second.close()
        first.close()


def test_a_dead_fetch_process_is_a_fetch_error(make_settings):
    settings = make_settings()
    ensure_topics(settings)
    with joined(settings) as (fetch, _):
        fetch._proc.send_signal(signal.SIGKILL)
        fail_within(fetch, "exited")


def test_a_failure_in_the_child_reaches_the_worker_with_its_cause(make_settings):
    settings = make_settings()
    ensure_topics(settings)
    with joined(settings) as (fetch, _):
        fetch.send(Ack())  # answers nothing: a protocol error the child reports, then exits
        fail_within(fetch, "unexpected Ack from the worker")
        assert fetch._proc.wait(timeout=30) == 1
