"""Asynchronous event log: impressions and forwarded feedback go to fairstream.events.

The request path only does ``queue.put_nowait`` on a bounded queue; a
background thread turns queued records into :mod:`stream.events` records,
encodes them and hands them to a ``KafkaProducer`` (itself asynchronous, acks
counted in its callbacks). When the queue is full the impression is dropped
and counted (``fairstream_serve_impressions_dropped_total``): serving never
waits on Kafka. Feedback refused this way is reported to the caller (503), so
a client can retry it.

>>> sent = []
>>> log = EventLog(lambda topic, key, value, kind: sent.append((topic, key, kind)),
...                topic="t.events", capacity=2)
>>> log.submit(Click(event_id="e", request_id="r", ts=1.0, user_id="u", item_id="i"))
True
>>> log.start().close()
>>> sent
[('t.events', b'u', 'click')]
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Mapping
from typing import Any

from stream.events import Click, Event, EventCodec, Impression, Purchase
from stream.metrics import ServeMetrics
from stream.serve.recommender import Recommendation

log = logging.getLogger(__name__)

#: send(topic, key, value, kind) -> None; kind is "impression", "click" or "purchase".
Send = Callable[[str, bytes, bytes, str], object]

_STOP = object()


class EventLog:
    """Bounded queue + one producer thread; ``log_impression`` is a :class:`Recommender` sink."""

    def __init__(self, send: Send, topic: str, capacity: int = 10_000,
                 metrics: ServeMetrics | None = None, codec: EventCodec | None = None) -> None:
        self._send = send
        self.topic = topic
        self.metrics = metrics
        self.codec = codec or EventCodec()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=capacity)
        self._thread: threading.Thread | None = None
        self.dropped = 0

    def __repr__(self) -> str:
        return (f"EventLog(topic={self.topic!r}, queued={self._queue.qsize()}, "
                f"dropped={self.dropped})")

    # -- request path (never blocks) -------------------------------------------------------------

    def log_impression(self, rec: Recommendation, user_id: str, user: Mapping[str, Any],
                       ts: float) -> bool:
        """Queue the impression of ``rec``; False (and counted) if the queue is full."""
        try:
            self._queue.put_nowait((rec, user_id, user, ts))
        except queue.Full:
            self.dropped += 1
            if self.metrics is not None:
                self.metrics.impressions_dropped.inc()
            return False
        return True

    def submit(self, event: Event) -> bool:
        """Queue any event (feedback); False if the queue is full (the caller says 503)."""
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            return False
        return True

    # -- producer thread -------------------------------------------------------------------------

    def start(self) -> EventLog:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="serve-event-log", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout_s: float = 10.0) -> None:
        """Send what is queued, then stop the thread (the producer's flush is the caller's)."""
        if self._thread is None:
            return
        self._queue.put(_STOP)  # blocking is fine here: shutdown, not a request
        self._thread.join(timeout_s)
        self._thread = None

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                self._emit(item)
            except Exception:  # a bad record must not kill the log thread
                log.exception("could not log event")
            if self.metrics is not None:
                self.metrics.log_queue.set(self._queue.qsize())

    def _emit(self, item: Any) -> None:
        if isinstance(item, tuple):
            rec, user_id, user, ts = item
            event: Event = Impression(
                event_id=f"{rec.request_id}-imp", request_id=rec.request_id, ts=ts,
                user_id=user_id, items=rec.items, propensities=rec.propensities,
                policy_version=rec.policy_version, user=dict(user))
            kind = "impression"
        else:
            event = item
            kind = "purchase" if isinstance(item, Purchase) else "click"
            assert isinstance(item, Click | Purchase)
        self._send(self.topic, event.user_id.encode(), self.codec.encode(event), kind)


def kafka_send(producer: Any, metrics: ServeMetrics | None) -> Send:
    """A :data:`Send` over a ``KafkaProducer`` that counts acks and errors in ``metrics``."""

    def on_error(exc: BaseException) -> None:
        log.warning("event not written to Kafka: %s", exc)
        if metrics is not None:
            metrics.produce_errors.inc()

    def send(topic: str, key: bytes, value: bytes, kind: str) -> None:
        future = producer.send(topic, key=key, value=value)
        if metrics is not None:
            if kind == "impression":
                future.add_callback(lambda _md: metrics.impressions_logged.inc())
            else:
                child = metrics.feedback.labels(type=kind)
                future.add_callback(lambda _md: child.inc())
        future.add_errback(on_error)

    return send
