"""Pseudonyms at the edge, on the real broker: users who reach the server by raw id and
full attributes appear on fairstream.events, in the worker's checkpoint, its metrics and
the logs only as pseudonyms with a gender code and an age bucket."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
from kafka import KafkaConsumer, TopicPartition
from prometheus_client import generate_latest

from stream.events import EventCodec, Impression
from stream.kafka.producers import publish_catalog, publish_events
from stream.kafka.topics import ensure_topics
from stream.privacy import Pseudonymizer, is_pseudonym
from stream.serve import ServerThread, ServeRuntime
from stream.worker import Worker, WorkerThread
from tests.stream.serve.test_serve_broker import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.model]

RAW = ("alice.raw@example.com", "bob-raw-4711")
PROFILE = {"gender": "female", "age": 31, "occupation": "writer", "zip": "55455"}


def topic_records(settings, topic: str, partitions: int) -> list:
    """Every record a topic retains, read from the beginning until it has been quiet."""
    import time

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap, enable_auto_commit=False)
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    consumer.seek_to_beginning()
    out, quiet_since = [], time.monotonic()
    while time.monotonic() - quiet_since < 1.5:
        batch = consumer.poll(200)
        for records in batch.values():
            out.extend(records)
            quiet_since = time.monotonic()
    consumer.close()
    return out


def drive(url: str, candidates: list[str], users=RAW) -> None:
    """One /recommend and one click on its first item per user, by raw id."""
    with httpx.Client(base_url=url, timeout=10) as client:
        for user in users:
            r = client.post("/recommend", json={"user_id": user, "user": PROFILE,
                                                "candidates": candidates, "k": 3})
            assert r.status_code == 200, r.text
            a = r.json()
            r = client.post("/feedback", json={"type": "click", "user_id": user,
                                               "request_id": a["request_id"],
                                               "item_id": a["items"][0]})
            assert r.status_code == 202, r.text


def test_only_pseudonyms_and_buckets_pass_the_edge(make_settings, ml_items, ml_catalog,
                                                   encoder, caplog):
    caplog.set_level(logging.DEBUG)
    settings = make_settings(events={"attribution_window_s": 5.0})
    ensure_topics(settings)
    publish_catalog(settings, ml_items)
    edge = Pseudonymizer.from_settings(settings.privacy)
    running = WorkerThread(Worker(settings, encoder=encoder), flush_on_exit=True).start()
    runtime = ServeRuntime(settings, encoder=encoder).start()
    try:
        with ServerThread(runtime.app) as srv:
            runtime.wait_ready(60)
            drive(srv.url, ml_catalog.ids[:20])
            report = running.worker.report
            wait_for(lambda: report.by_type.get("click", 0) >= len(RAW), 90, "clicks learnt")
            server_metrics = generate_latest(runtime.metrics.registry).decode()
        worker_metrics = generate_latest(running.worker.metrics.registry).decode()
        # A producer handed a raw id refuses it before it reaches Kafka.
        raw = Impression(event_id="x", request_id="x", ts=1.0, user_id=RAW[0], items=["1"],
                         propensities=[1.0], policy_version="p")
        with pytest.raises(ValueError, match="raw id"):
            publish_events(settings, iter([raw]), progress=False)
    finally:
        runtime.close()
        running.stop()

    pseudonyms = {edge.user(u) for u in RAW}
    codec = EventCodec(settings.events.max_bytes, settings.events.max_slate)
    events = [(r.key, codec.decode(r.value)) for r in
              topic_records(settings, settings.topics.events, settings.kafka.events_partitions)]
    assert len(events) == 2 * len(RAW)
    for key, event in events:
        assert is_pseudonym(event.user_id) and key == event.user_id.encode()
        if isinstance(event, Impression):
            assert event.user == {"gender": "F", "age": "25-34"}
    assert {e.user_id for _, e in events} == pseudonyms
    # The worker learnt them under their pseudonyms: the checkpoint names those, no raw id.
    checkpoint = Path(settings.worker.checkpoint_path).read_bytes()
    assert all(p.encode() in checkpoint for p in pseudonyms)
    written = [checkpoint, *(r.value for r in topic_records(
        settings, settings.topics.dlq, settings.kafka.events_partitions))]
    texts = [caplog.text, server_metrics, worker_metrics]
    for user in RAW:
        assert not any(user.encode() in blob for blob in written)
        assert not any(user in text for text in texts)
    for value in ("writer", "55455"):  # attributes that never leave the edge
        assert value.encode() not in checkpoint
