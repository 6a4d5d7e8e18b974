"""The worker on the real broker, the real MiniLM model and real MovieLens events."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.partitioner.default import murmur2

from stream.core.bundle import load_bundle
from stream.core.catalog import Catalog
from stream.core.checkpoint import read_checkpoint
from stream.core.state import LearningState
from stream.events import Click
from stream.exceptions import ConfigError
from stream.kafka.limits import check_dlq_limits
from stream.kafka.producers import (
    catalog_items,
    make_producer,
    publish_catalog,
    publish_events,
    replay_events,
)
from stream.kafka.topics import ensure_topics
from stream.sim.demo import MALFORMED
from stream.worker import Worker, WorkerThread
from tests.stream.worker.conftest import handled, kill_left

pytestmark = [pytest.mark.broker, pytest.mark.model]

N_RATINGS = 1500


def reference_state(settings, ml, encoder, events):
    """What the worker must end with: the same events fed straight into a LearningState,
    in per-partition order, with the partition the producer's partitioner picks."""
    catalog = Catalog(encoder.dim)
    catalog.add(catalog_items(ml), encoder)
    state = LearningState.fresh(settings, catalog)
    n_parts = settings.kafka.events_partitions
    seen = set()
    for event in events:
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        p = (murmur2(event.user_id.encode()) & 0x7FFFFFFF) % n_parts  # Kafka's keyed default
        state.learn(state.observe(event, p))
    return state


def read_topic(settings, topic, partitions=1):
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap, enable_auto_commit=False)
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    consumer.seek_to_beginning()
    values, quiet_since = [], time.monotonic()
    while time.monotonic() - quiet_since < 2.0:
        for records in consumer.poll(200).values():
            values.extend(r.value for r in records)
            quiet_since = time.monotonic()
    consumer.close()
    return values


def assert_same_learning(state, ref, same_policy):
    same_policy(state.policy, ref.policy)
    pa, pb = state.profiles.state(), ref.profiles.state()
    assert sorted(pa["user_ids"]) == sorted(pb["user_ids"])
    order = {u: i for i, u in enumerate(pb["user_ids"])}
    idx = [order[u] for u in pa["user_ids"]]
    np.testing.assert_allclose(pa["means"], pb["means"][idx], rtol=1e-6, atol=1e-7)
    assert len(state.joiner) == len(ref.joiner)


#: An impression whose slate holds a known item and an unknown one.
UNKNOWN_IN_SLATE = (b'{"v": 1, "type": "impression", "event_id": "bad-5", "request_id": "r5", '
                    b'"ts": 1.0, "user_id": "1", "items": ["1", "no-such-item"], '
                    b'"propensities": [0.5, 0.5], "policy_version": "p"}')


def far_future_clicks(n_partitions: int) -> list[tuple[bytes, bytes]]:
    """One click per partition stamped in the year 33658 (key, value): without the clock
    bound each would move its partition's watermark there, and every later impression
    would close at once with reward 0."""
    out, users = {}, (str(u) for u in itertools.count(1))
    while len(out) < n_partitions:
        user = next(users)
        p = (murmur2(user.encode()) & 0x7FFFFFFF) % n_partitions
        out.setdefault(p, (user.encode(), (
            f'{{"v": 1, "type": "click", "event_id": "future-{p}", "request_id": "r", '
            f'"ts": 1e12, "user_id": "{user}", "item_id": "1"}}').encode()))
    return [out[p] for p in sorted(out)]


FUTURE = far_future_clicks(2)
BAD = len(MALFORMED) + 2 + len(FUTURE)  # with oversize, UNKNOWN_IN_SLATE and FUTURE


def bad_records(settings) -> list[bytes]:
    """The malformed, oversize and unknown-item records the worker tests interleave."""
    return [*MALFORMED.values(), b"x" * (settings.events.max_bytes + 1), UNKNOWN_IN_SLATE]


def published_versions(settings) -> list[int]:
    """The version of every bundle on the policies topic, in order."""
    return [load_bundle(v, key=settings.policy.signing_key.encode(),
                        dim=settings.features.dim).version
            for v in read_topic(settings, settings.topics.policies)]


@pytest.fixture
def loaded(make_settings, movielens):
    """Topics, catalog and a replay slice (plus malformed messages and one duplicate)."""
    settings = make_settings(worker={"checkpoint_every_events": 400})
    ensure_topics(settings)
    publish_catalog(settings, catalog_items(movielens))
    events = list(replay_events(movielens, limit=N_RATINGS))
    duplicate = next(e for e in events if isinstance(e, Click))
    producer = make_producer(settings)
    for key, value in FUTURE:  # first: they must not poison what follows
        producer.send(settings.topics.events, key=key, value=value)
    producer.flush()
    publish_events(settings, iter([*events[:100], duplicate, *events[100:]]), progress=False)
    for value in bad_records(settings):
        producer.send(settings.topics.events, key=b"bad", value=value)
    producer.flush()
    producer.close()
    return settings, events


def test_worker_learns_exactly_what_the_stream_holds(loaded, movielens, encoder, same_policy):
    settings, events = loaded
    worker = Worker(settings, encoder=encoder)
    port = worker.serve_metrics()
    running = WorkerThread(worker).start()
    total = len(events) + 1 + BAD
    deadline = time.monotonic() + 120
    while worker.report.events < total:
        assert time.monotonic() < deadline and running.is_alive(), worker.report
        time.sleep(0.1)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()  # scraped over HTTP while the worker runs
    report = running.stop(timeout_s=60)
    n_valid = len(events)
    assert report.events == n_valid + 1 + BAD
    assert report.duplicates == 1
    assert report.rejected == BAD
    ref = reference_state(settings, movielens, encoder, events)
    assert_same_learning(worker.state, ref, same_policy)
    assert worker.state.drift.updates == ref.drift.updates > 0  # every reward, once
    ck = read_checkpoint(settings.worker.checkpoint_path)
    restored = LearningState.from_checkpoint(settings, ref.catalog, ck)
    assert_same_learning(restored, ref, same_policy)
    assert sum(ck.offsets.values()) == report.events

    # Every bad message is on the DLQ, unchanged, with its reason.
    dlq = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(settings.topics.dlq, p) for p in range(2)]
    dlq.assign(tps)
    dlq.seek_to_beginning()
    dead, deadline = [], time.monotonic() + 20
    while len(dead) < BAD and time.monotonic() < deadline:
        for records in dlq.poll(500).values():
            dead += [(dict(rec.headers)["reason"].decode(), rec.value) for rec in records]
    dlq.close()
    assert len(dead) == BAD
    assert {reason for reason, _ in dead} == {*MALFORMED, "oversize", "clock_skew"}
    for reason, value in MALFORMED.items():
        assert (reason, value) in dead
    assert ("unknown_item", UNKNOWN_IN_SLATE) in dead

    # /metrics as scraped while it ran, and the final counters.
    for reason in MALFORMED:
        value = worker.metrics.registry.get_sample_value("fairstream_events_rejected_total",
                                                         {"reason": reason})
        assert value == (2.0 if reason == "unknown_item" else 1.0)
    assert 'fairstream_events_consumed_total{type="impression"}' in text
    assert "fairstream_bandit_update_duration_seconds_bucket" in text
    assert 'fairstream_consumer_lag_messages{partition="0"}' in text
    assert "fairstream_checkpoint_age_seconds" in text


def _worker_proc(settings, log, exit_when_idle=None, failpoints="", **worker):
    env = {**os.environ,
           "FAILPOINTS": failpoints,  # stream.failpoints: where a crash test kills it
           "FAIRSTREAM_KAFKA__BOOTSTRAP": settings.kafka.bootstrap,
           "FAIRSTREAM_KAFKA__GROUP_ID": settings.kafka.group_id,
           "FAIRSTREAM_KAFKA__EVENTS_PARTITIONS": str(settings.kafka.events_partitions),
           "FAIRSTREAM_KAFKA__SESSION_TIMEOUT_MS": str(settings.kafka.session_timeout_ms),
           "FAIRSTREAM_TOPICS__PREFIX": settings.topics.prefix,
           "FAIRSTREAM_DATA__CACHE_DIR": settings.data.cache_dir,
           "FAIRSTREAM_MODEL__DEVICE": "cpu",
           "FAIRSTREAM_MODEL__EMBEDDING_CACHE": settings.model.embedding_cache,
           "FAIRSTREAM_WORKER__CHECKPOINT_PATH": settings.worker.checkpoint_path,
           "FAIRSTREAM_WORKER__POLL_MAX_RECORDS": "100",
           "FAIRSTREAM_WORKER__METRICS_PORT": "0",
           # `fairstream worker` refuses the built-in key; in-process readers use the same
           "FAIRSTREAM_POLICY__SIGNING_KEY": settings.policy.signing_key,
           **{f"FAIRSTREAM_WORKER__{k.upper()}": str(v) for k, v in worker.items()}}
    idle = ["--exit-when-idle", str(exit_when_idle)] if exit_when_idle is not None else []
    return subprocess.Popen([sys.executable, "-m", "stream.cli", "worker", *idle],
                            stdout=log, stderr=subprocess.STDOUT, env=env)


def _wait_for(what, condition, proc, log_path, timeout=120.0):
    """Wait for a condition that, once true, stays true (a phase boundary), failing fast
    if the worker process dies first."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert proc.poll() is None, f"worker exited waiting for {what}:\n{log_path.read_text()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def _checkpointed(path) -> int:
    """The number of records the checkpoint at ``path`` covers (0 when there is none)."""
    return sum(read_checkpoint(path).offsets.values()) if os.path.exists(path) else 0



def test_sigkill_after_learning_past_a_checkpoint_then_restart_equals_one_run(
        make_settings, movielens, encoder, tmp_path, same_policy):
    """Phases, not timing, choose where the kill lands.

    Phase 1 (the bad records included) is exactly one checkpoint interval long, so the
    worker checkpoints once it has handled all of it, and not before. Phase 2 is shorter
    than an interval: the worker learns it without checkpointing, and the test kills it
    once /metrics shows every phase-2 record handled. The restart must learn phase 2
    again from the checkpoint, then phase 3, and end as one uninterrupted run."""
    settings = make_settings()
    ensure_topics(settings)
    publish_catalog(settings, catalog_items(movielens))
    events = list(replay_events(movielens, limit=N_RATINGS))
    duplicate = next(e for e in events if isinstance(e, Click))
    cut1, cut2 = len(events) // 2, 3 * len(events) // 4
    producer = make_producer(settings)
    for key, value in FUTURE:
        producer.send(settings.topics.events, key=key, value=value)
    producer.flush()
    publish_events(settings, iter([*events[:100], duplicate, *events[100:cut1]]), progress=False)
    for value in bad_records(settings):
        producer.send(settings.topics.events, key=b"bad", value=value)
    producer.flush()
    producer.close()
    phase1 = cut1 + 1 + BAD
    assert cut2 - cut1 < phase1  # phase 2 never fills an interval

    log_path = tmp_path / "worker.log"
    log = open(log_path, "w")  # noqa: SIM115
    path = settings.worker.checkpoint_path
    knobs = {"checkpoint_every_events": phase1, "checkpoint_every_s": 3600}
    procs = []
    try:
        first = _worker_proc(settings, log, **knobs)
        procs.append(first)
        port = int(_wait_for("the metrics port", lambda: re.search(
            r"metrics on :(\d+)/metrics", log_path.read_text()), first, log_path).group(1))
        _wait_for("the phase-1 checkpoint", lambda: _checkpointed(path) == phase1, first, log_path)

        publish_events(settings, iter(events[cut1:cut2]), progress=False)
        _wait_for("phase 2 handled", lambda: handled(port) == phase1 + cut2 - cut1,
                  first, log_path)
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert _checkpointed(path) == phase1  # phase 2 was learnt, never checkpointed

        publish_events(settings, iter(events[cut2:]), progress=False)
        second = _worker_proc(settings, log, exit_when_idle=3, **knobs)
        procs.append(second)
        assert second.wait(timeout=180) == 0, log_path.read_text()
        log.close()
    finally:
        kill_left(procs)
    summary = json.loads(log_path.read_text().strip().splitlines()[-1])
    assert summary["events"] == len(events) - cut1  # resumed at the checkpoint, not before

    ref = reference_state(settings, movielens, encoder, events)
    ck = read_checkpoint(path)
    assert sum(ck.offsets.values()) == len(events) + 1 + BAD
    assert_same_learning(LearningState.from_checkpoint(settings, ref.catalog, ck), ref,
                         same_policy)

    # Every bad record reached the DLQ before the checkpoint that covers it was written.
    assert len(read_topic(settings, settings.topics.dlq, partitions=2)) == BAD

    # Policy versions only go up across the crash: servers swap only to a newer number.
    versions = published_versions(settings)
    assert len(versions) >= 3
    assert all(a < b for a, b in itertools.pairwise(versions)), versions


@pytest.mark.parametrize("failpoint", ["checkpoint.settled", "checkpoint.written"])
def test_a_crash_between_flush_and_checkpoint_or_checkpoint_and_commit_loses_nothing(
        failpoint, make_settings, movielens, encoder, tmp_path, same_policy):
    """A failpoint (stream.failpoints) kills the worker at its second checkpoint, at one
    exact place, so no race decides where:

    * ``checkpoint.settled``: phase 2's dead letters and bundles are acknowledged, the
      file not written. The restart resumes at checkpoint 1 and handles phase 2 again:
      its dead letters go out a second time (at least once), nothing is learnt twice;
    * ``checkpoint.written``: the file is written, its offsets not committed. The
      restart resumes at checkpoint 2 (the file is the truth, not the group's commits)
      and handles only phase 3.

    Each phase is exactly one checkpoint interval, bad records included; both runs end
    as one uninterrupted run, with every bad record on the DLQ."""
    settings = make_settings()
    ensure_topics(settings)
    publish_catalog(settings, catalog_items(movielens))
    events = list(replay_events(movielens, limit=N_RATINGS))
    bad = bad_records(settings)
    a = len(events) // 3
    interval = a + len(bad)
    phases = [events[:a], events[a:2 * a], events[2 * a:]]

    def publish(phase, with_bad):
        publish_events(settings, iter(phase), progress=False)
        if with_bad:
            producer = make_producer(settings)
            for value in bad:
                producer.send(settings.topics.events, key=b"bad", value=value)
            producer.flush()
            producer.close()

    log_path = tmp_path / "worker.log"
    log = open(log_path, "w")  # noqa: SIM115
    path = settings.worker.checkpoint_path
    knobs = {"checkpoint_every_events": interval, "checkpoint_every_s": 3600}
    procs = []
    try:
        publish(phases[0], with_bad=True)
        first = _worker_proc(settings, log, failpoints=f"{failpoint}=2", **knobs)
        procs.append(first)
        _wait_for("checkpoint 1", lambda: _checkpointed(path) == interval, first, log_path)
        publish(phases[1], with_bad=True)
        assert first.wait(timeout=180) == -signal.SIGKILL, log_path.read_text()
        dead_letters = len(read_topic(settings, settings.topics.dlq, partitions=2))
        assert dead_letters == 2 * len(bad)  # acknowledged before the crash, in both cases
        at_restart = interval if failpoint == "checkpoint.settled" else 2 * interval
        assert _checkpointed(path) == at_restart

        publish(phases[2], with_bad=False)
        second = _worker_proc(settings, log, exit_when_idle=3, **knobs)
        procs.append(second)
        assert second.wait(timeout=180) == 0, log_path.read_text()
        log.close()
    finally:
        kill_left(procs)
    ck = read_checkpoint(path)
    assert sum(ck.offsets.values()) == len(events) + 2 * len(bad)
    ref = reference_state(settings, movielens, encoder, events)
    assert_same_learning(LearningState.from_checkpoint(settings, ref.catalog, ck), ref,
                         same_policy)
    again = len(bad) if failpoint == "checkpoint.settled" else 0  # phase 2's, sent twice
    assert len(read_topic(settings, settings.topics.dlq, partitions=2)) == 2 * len(bad) + again
    versions = published_versions(settings)
    assert len(versions) >= 2 and all(x < y for x, y in itertools.pairwise(versions)), versions


def test_a_second_worker_checkpoints_the_first_and_learns_its_partition_from_the_start(
        loaded, movielens, encoder, tmp_path):
    """A rebalance through the fetch processes, without the statistics exchange: the first
    worker checkpoints before it gives anything up; the second reads its partition from
    the log start, not from where the first committed (its model is its own: what the
    first learnt is not in it), and both know they hold part of the model
    (tests/stream/worker/test_worker_partial.py: neither publishes it)."""
    settings, events = loaded
    total = len(events) + 1 + BAD
    first = Worker(settings, encoder=encoder)
    second = Worker(settings.replace(worker={"checkpoint_path": str(tmp_path / "b.npz")}),
                    encoder=encoder)
    runners = [WorkerThread(first).start()]

    def wait(what, condition):
        deadline = time.monotonic() + 120
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            assert all(r.is_alive() for r in runners), f"a worker died waiting for {what}"
            time.sleep(0.1)

    def checkpoints():
        return first.metrics.checkpoints._value.get()

    try:
        wait("the first worker to read everything", lambda: first.report.events == total)
        after_all = checkpoints() + 1
        wait("a timed checkpoint, which commits", lambda: checkpoints() >= after_all)
        runners.append(WorkerThread(second).start())
        wait("one partition each", lambda: len(first._assigned) == len(second._assigned) == 1)
        assert checkpoints() > after_all  # once more, before giving a partition up
        ck = read_checkpoint(settings.worker.checkpoint_path)
        assert sum(ck.offsets.values()) == total  # everything, written before the split

        (p,) = second._assigned
        wait("the second worker to read its partition",
             lambda: second._highwater.get(p) == second.state.offsets.get(p, -1))
        # From offset 0: every record of the partition, though the group had committed
        # its end (where the first worker's checkpoint stands).
        assert ck.offsets[p] == second._highwater[p]
        assert second.report.events == second._highwater[p] > 0
        assert set(second.state.offsets) == {p}  # never read the other one
        for w in (first, second):
            assert w.metrics.registry.get_sample_value("fairstream_worker_partial_model") == 1
    finally:
        for r in runners:
            r.stop_event.set()
        for r in runners:
            r.stop(timeout_s=60)


def test_a_worker_process_runs_numpy_blas_on_one_thread():
    from threadpoolctl import threadpool_info, threadpool_limits

    from stream.worker import single_threaded_blas

    with threadpool_limits(limits=None, user_api="blas"):  # restores the counts on exit
        single_threaded_blas()
        blas = [lib for lib in threadpool_info() if lib["user_api"] == "blas"]
        assert blas and all(lib["num_threads"] == 1 for lib in blas)


def test_records_of_1_2_and_8_mib_reach_the_dlq_as_markers_and_learning_goes_on(
        make_settings, movielens, encoder):
    """A value the DLQ could not hold used to stop the worker for good (every restart
    read it again); it now goes to the DLQ as a marker, and later events are learnt."""
    settings = make_settings()
    ensure_topics(settings)
    publish_catalog(settings, catalog_items(movielens))
    events = list(replay_events(movielens, limit=200))
    big = {n: bytes([65 + n]) * (n << 20) for n in (1, 2, 8)}
    publish_events(settings, iter(events[:100]), progress=False)
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap,
                             max_request_size=16 << 20)
    for value in big.values():
        producer.send(settings.topics.events, key=b"big", value=value)
    producer.flush()
    producer.close()
    publish_events(settings, iter(events[100:]), progress=False)
    total = len(events) + len(big)

    worker = Worker(settings, encoder=encoder)
    with WorkerThread(worker) as running:
        deadline = time.monotonic() + 120
        while worker.report.events < total:
            assert time.monotonic() < deadline and running.is_alive(), worker.report
            time.sleep(0.1)
    assert worker.report.rejected == len(big)
    assert worker.state.policy.n_updates == reference_state(
        settings, movielens, encoder, events).policy.n_updates
    markers = [json.loads(v) for v in read_topic(settings, settings.topics.dlq, partitions=2)]
    assert sorted(m["size"] for m in markers) == sorted(len(v) for v in big.values())
    for m in markers:
        value = big[m["size"] >> 20]
        assert m["marker"] == "too_large" and m["reason"] == "oversize"
        assert m["sha256"] == hashlib.sha256(value).hexdigest()
        assert base64.b64decode(m["head"]) == value[:256]
        assert m["source"].startswith(f"{settings.topics.events}/")


def test_the_dlq_limits_are_checked_against_the_broker_at_start(make_settings, encoder):
    """The worker sizes its own DLQ topic for the dead letters it may write, and refuses
    to start on one an operator made smaller, in one line naming the setting."""
    settings = make_settings()
    ensure_topics(settings)
    assert check_dlq_limits(settings) == settings.worker.dlq_max_request_bytes

    small = make_settings()
    admin = KafkaAdminClient(bootstrap_servers=small.kafka.bootstrap)
    try:
        admin.create_topics([NewTopic(small.topics.dlq, 2, 1,
                                      topic_configs={"max.message.bytes": "200000"})])
    finally:
        admin.close()
    worker = Worker(small, encoder=encoder)
    stopped = threading.Event()
    stopped.set()  # without the check, run() would return at once, having read nothing
    with pytest.raises(ConfigError) as refused:
        worker.run(stopped)
    line = str(refused.value)
    assert "\n" not in line and line.startswith("worker.dlq_max_request_bytes (1048576)")
    assert f"on {small.topics.dlq} (topic max.message.bytes = 200000)" in line
    assert worker.report.events == 0
