"""A server whose broker goes away and comes back empty: not ready, and /feedback 503,
while events cannot be written; ready again once they can.

A private broker (the session's one is never restarted) on a fixed port, so the server's
clients reconnect to the same address.
"""

from __future__ import annotations

import time

import httpx
import pytest

from stream.kafka.broker import EmbeddedBroker
from stream.kafka.producers import make_producer, publish_catalog
from stream.kafka.topics import ensure_topics
from stream.serve import ServerThread, ServeRuntime
from stream.settings import ServeSettings
from tests.stream.serve.conftest import make_bundle

pytestmark = [pytest.mark.broker, pytest.mark.model]


def wait_for(cond, timeout_s: float, what: str):
    """Wait for a state that, once reached, stays reached (a phase boundary)."""
    deadline = time.monotonic() + timeout_s
    while not (value := cond()):
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        time.sleep(0.05)
    return value


@pytest.fixture
def private_broker(tmp_path):
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as b:
        yield b


def test_a_server_that_cannot_produce_is_not_ready_and_refuses_feedback_until_it_can(
        private_broker, make_settings, ml_items, ml_catalog, encoder):
    settings = make_settings(kafka={"bootstrap": private_broker.bootstrap})
    ensure_topics(settings)
    publish_catalog(settings, ml_items)
    producer = make_producer(settings)
    producer.send(settings.topics.policies, key=settings.kafka.group_id.encode(),
                  value=make_bundle(settings, ml_catalog, 1))
    producer.flush()
    producer.close()
    serve = ServeSettings(seed=7, produce_timeout_ms=1500)
    runtime = ServeRuntime(settings, serve, encoder=encoder).start()
    forwarded = runtime.metrics.feedback.labels(type="click")
    click = {"type": "click", "user_id": "u1", "request_id": "r1", "item_id": ml_catalog.ids[0]}
    try:
        with ServerThread(runtime.app) as srv:
            client = httpx.Client(base_url=srv.url, timeout=10)
            runtime.wait_ready(60)

            # Phase 1: producing. A click is accepted and acknowledged.
            assert client.post("/feedback", json=click).status_code == 202
            wait_for(lambda: forwarded._value.get() == 1, 15, "the first click acked")

            # Phase 2: the broker is gone. Served slates still log their impressions;
            # once a send has failed, nothing can be acknowledged until it is back, so
            # the server stays not ready.
            private_broker.stop()

            def ready_after_a_slate() -> bool:
                """Serve a slate (one key: its impressions complete in order), and wait
                until every send so far has completed: readiness then reflects the
                latest send."""
                client.post("/recommend", json={"user_id": "u2"})
                wait_for(lambda: not runtime.event_log._buffer, 5, "the log queue drained")
                runtime.producer.flush(timeout=10)
                return client.get("/readyz").status_code == 200

            def not_ready() -> bool:
                return not ready_after_a_slate()

            wait_for(not_ready, 30, "/readyz 503 after a failed send")
            body = client.get("/readyz").json()
            assert body["ready"] is False and body["producing"] is False
            assert "sends in a row failed" in body["errors"]["events_producer"]
            r = client.post("/feedback", json=click)
            assert r.status_code == 503 and r.json()["error"] == "kafka_unavailable"
            assert runtime.metrics.invalid_requests.labels(
                reason="kafka_unavailable")._value.get() == 1
            assert client.get("/readyz").status_code == 503

            # Phase 3: the broker restarts empty, and its topics are created again (as a
            # worker does on start). The next acknowledged impression makes it ready.
            private_broker.start()
            ensure_topics(settings)
            wait_for(ready_after_a_slate, 60, "/readyz 200 after an acknowledged send")
            assert client.get("/readyz").json()["producing"] is True

            # Phase 4: feedback is accepted again, and Kafka acknowledges it.
            assert client.post("/feedback", json=click).status_code == 202
            wait_for(lambda: forwarded._value.get() == 2, 15, "a click acked after it")
    finally:
        runtime.close()
