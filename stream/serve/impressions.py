"""Asynchronous event log: impressions and forwarded feedback go to fairstream.events.

The request path only appends to a bounded buffer (a ``deque``: no lock, no
thread wake-up); a background thread drains the buffer every
``flush_interval_s`` (sooner once it is half full), turns the records into
:mod:`stream.events` records, encodes them and hands them to a
``KafkaProducer`` (itself asynchronous, acks counted in its callbacks).
Draining in batches keeps the request path from waking another thread (a GIL
hand-off) for every request. When the buffer is full the impression is dropped and counted
(``fairstream_serve_impressions_dropped_total``): serving never waits on
Kafka. Feedback refused this way is reported to the caller (503), so a client
can retry it.

:class:`ProducerHealth` follows the producer's callbacks: after
``serve.produce_failures_unready`` failed sends in a row the server is not ready and
/feedback answers 503 ``kafka_unavailable`` (a 202 would promise an event that is not
written), until the next acknowledged send.

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
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
from kafka.errors import KafkaError

from stream.events import Click, Event, EventCodec, Impression, Purchase
from stream.metrics import ServeMetrics
from stream.serve.recommender import Recommendation

log = logging.getLogger(__name__)

#: send(topic, key, value, kind) -> None; kind is "impression", "click" or "purchase".
Send = Callable[[str, bytes, bytes, str], object]


class EventLog:
    """Bounded buffer + one producer thread; ``log_impression`` is a :class:`Recommender` sink.

    ``capacity`` bounds what waits in memory; ``flush_interval_s`` bounds how
    long a record waits before it reaches the producer (which then lingers
    for its own batch).
    """

    def __init__(self, send: Send, topic: str, capacity: int = 10_000,
                 metrics: ServeMetrics | None = None, codec: EventCodec | None = None,
                 flush_interval_s: float = 0.02) -> None:
        self._send = send
        self.topic = topic
        self.metrics = metrics
        self.codec = codec or EventCodec()
        self.capacity = int(capacity)
        self.flush_interval_s = float(flush_interval_s)
        # deque.append / popleft are atomic under the GIL: one producer side (the
        # request path) and one consumer (the log thread) need no lock.
        self._buffer: deque[Any] = deque()
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self.dropped = 0

    def __repr__(self) -> str:
        return (f"EventLog(topic={self.topic!r}, queued={len(self._buffer)}, "
                f"dropped={self.dropped})")

    # -- request path (never blocks) -------------------------------------------------------------

    def _put(self, item: Any) -> bool:
        n = len(self._buffer)
        if n >= self.capacity or self._closing:
            return False
        self._buffer.append(item)
        if n + 1 == self.capacity // 2:
            self._wake.set()  # half full: drain now rather than at the next tick
        return True

    def log_impression(self, rec: Recommendation, user_id: str, user: Mapping[str, Any],
                       ts: float) -> bool:
        """Buffer the impression of ``rec``; False (and counted) if the buffer is full."""
        if self._put((rec, user_id, user, ts)):
            return True
        self.dropped += 1
        if self.metrics is not None:
            self.metrics.impressions_dropped.inc()
        return False

    def submit(self, event: Event) -> bool:
        """Buffer any event (feedback); False if the buffer is full (the caller says 503)."""
        return self._put(event)

    # -- producer thread -------------------------------------------------------------------------

    def start(self) -> EventLog:
        if self._thread is None:
            self._closing = False
            self._thread = threading.Thread(target=self._run, name="serve-event-log", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout_s: float = 10.0) -> None:
        """Send what is buffered, then stop the thread (the producer's flush is the caller's)."""
        if self._thread is None:
            return
        self._closing = True
        self._wake.set()
        self._thread.join(timeout_s)
        self._thread = None

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            closing = self._closing  # read before draining: nothing is appended after it
            self._drain()
            if closing:
                self._drain()
                return

    def _drain(self) -> None:
        buffer = self._buffer
        while buffer:
            item = buffer.popleft()
            try:
                self._emit(item)
            except Exception:  # a bad record must not kill the log thread
                log.exception("could not log event")
        if self.metrics is not None:
            self.metrics.log_queue.set(len(buffer))

    def _emit(self, item: Any) -> None:
        if isinstance(item, tuple):
            rec, user_id, user, ts = item
            # Every impression of an experiment carries its experiment and arm.
            event: Event = Impression(
                event_id=f"{rec.request_id}-imp", request_id=rec.request_id, ts=ts,
                user_id=user_id, items=rec.items, propensities=rec.propensities,
                policy_version=rec.policy_version, user=dict(user),
                experiment=msgspec.UNSET if rec.experiment is None else rec.experiment,
                arm=msgspec.UNSET if rec.arm is None else rec.arm)
            kind = "impression"
        else:
            event = item
            kind = "purchase" if isinstance(item, Purchase) else "click"
            assert isinstance(item, Click | Purchase)
        self._send(self.topic, event.user_id.encode(), self.codec.encode(event), kind)


class ProducerHealth:
    """Whether events reach Kafka: not after ``failures_unready`` failed sends in a row;
    again on the next acknowledged one. Served slates keep logging their impressions
    while not producing, so traffic that reaches the server brings it back.

    >>> h = ProducerHealth(failures_unready=2)
    >>> h.failed(TimeoutError("expired")); h.producing
    True
    >>> h.failed(TimeoutError("expired")); h.producing, h.reason
    (False, "2 sends in a row failed, the last: TimeoutError('expired')")
    >>> h.acked(); h.producing, h.reason
    (True, None)
    """

    def __init__(self, failures_unready: int = 1) -> None:
        self.failures_unready = int(failures_unready)
        # Written from the producer's IO thread (callbacks) and the event log's (a send
        # that raises); a plain int: a lost race shifts the flip by one send at most.
        self._failures = 0
        self._last_error: BaseException | None = None

    @property
    def producing(self) -> bool:
        return self._failures < self.failures_unready

    @property
    def reason(self) -> str | None:
        """Why events are not reaching Kafka; None while they are."""
        if self.producing:
            return None
        return f"{self._failures} sends in a row failed, the last: {self._last_error!r}"

    def acked(self) -> None:
        if self._failures:  # the hot path: one comparison per acknowledged event
            if not self.producing:
                log.info("Kafka acknowledges events again: ready")
            self._failures = 0

    def failed(self, exc: BaseException) -> None:
        self._last_error = exc
        self._failures += 1
        if self._failures == self.failures_unready:
            log.warning("events are not reaching Kafka: not ready (%s)", self.reason)


def kafka_send(producer: Any, metrics: ServeMetrics | None,
               health: ProducerHealth | None = None) -> Send:
    """A :data:`Send` over a ``KafkaProducer`` that counts acks and errors in ``metrics``
    and reports them to ``health``."""

    def on_error(exc: BaseException) -> None:
        log.warning("event not written to Kafka: %s", exc)
        if metrics is not None:
            metrics.produce_errors.inc()
        if health is not None:
            health.failed(exc)

    def send(topic: str, key: bytes, value: bytes, kind: str) -> None:
        try:
            future = producer.send(topic, key=key, value=value)
        except KafkaError as exc:  # no metadata for the topic within max_block_ms
            on_error(exc)
            return
        if health is not None:
            future.add_callback(lambda _md: health.acked())
        if metrics is not None:
            if kind == "impression":
                future.add_callback(lambda _md: metrics.impressions_logged.inc())
            else:
                child = metrics.feedback.labels(type=kind)
                future.add_callback(lambda _md: child.inc())
        future.add_errback(on_error)

    return send
