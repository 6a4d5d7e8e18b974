"""Steady load for :mod:`stream.bench.soak`: paced threads in the soak's own process.

:class:`Replay` sends MovieLens events at a fixed rate, stamped with the wall
clock and looped with fresh ids; :class:`Requests` alternates ``POST
/recommend`` and ``POST /feedback`` (a click on the previous answer's first
item) at a fixed rate on one keep-alive connection. Each counts what it sent
and what failed, and keeps what stopped it early in ``error``.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from typing import Any

import msgspec
import numpy as np

from stream.settings import Settings

__all__ = ["PacedLoad", "Replay", "Requests"]


class PacedLoad(threading.Thread):
    """A paced loop in a thread; ``error`` holds what stopped it early."""

    def __init__(self, name: str, rate: float, stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.rate, self.stop_event = rate, stop
        self.sent = 0
        self.failed = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.setup()
            t0 = time.monotonic()
            while not self.stop_event.is_set():
                due = int((time.monotonic() - t0) * self.rate)
                while self.sent < due and not self.stop_event.is_set():
                    self.one()
                    self.sent += 1
                self.stop_event.wait(0.01)
        except BaseException as exc:  # surfaced by the sampler loop, which fails the run
            self.error = exc
        finally:
            self.teardown()

    def setup(self) -> None: ...

    def one(self) -> None: ...

    def teardown(self) -> None: ...


class Replay(PacedLoad):
    """MovieLens replay at a fixed rate, stamped now, looped with fresh ids."""

    def __init__(self, settings: Settings, ml: Any, rate: float, stop: threading.Event) -> None:
        super().__init__("soak-replay", rate, stop)
        self.settings, self.ml = settings, ml
        self.lap = 0

    def setup(self) -> None:
        from stream.events import EventCodec
        from stream.kafka.producers import make_producer

        self.codec = EventCodec(self.settings.events.max_bytes, self.settings.events.max_slate)
        self.producer = make_producer(self.settings)
        self.events = self._events()

    def _events(self):
        from stream.events import Click
        from stream.kafka.producers import replay_events
        from stream.privacy import Pseudonymizer

        edge = Pseudonymizer.from_settings(self.settings.privacy)  # the server's pseudonyms
        while True:
            for e in replay_events(self.ml, pseudonyms=edge):
                # A click follows its impression by 1 s of event time, as in the replay.
                yield msgspec.structs.replace(
                    e, event_id=f"soak{self.lap}-{e.event_id}",
                    request_id=f"soak{self.lap}-{e.request_id}",
                    ts=time.time() + (1.0 if isinstance(e, Click) else 0.0))
            self.lap += 1

    def one(self) -> None:
        e = next(self.events)
        future = self.producer.send(self.settings.topics.events, key=e.user_id.encode(),
                                    value=self.codec.encode(e))
        future.add_errback(self._failed)

    def _failed(self, _exc: BaseException) -> None:
        self.failed += 1

    def teardown(self) -> None:
        producer = getattr(self, "producer", None)
        if producer is not None:
            producer.flush(timeout=10)
            producer.close()


class Requests(PacedLoad):
    """/recommend and /feedback, alternating, on one keep-alive connection."""

    def __init__(self, port: int, item_ids: list[str], rate: float,
                 stop: threading.Event) -> None:
        super().__init__("soak-requests", rate, stop)
        self.port, self.item_ids = port, item_ids
        self.rng = np.random.default_rng(0)
        self.latency_s: dict[str, list[float]] = {"recommend": [], "feedback": []}
        self.last: tuple[str, str, str] | None = None  # user, request id, item
        self.conn: http.client.HTTPConnection | None = None

    def _post(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        t0 = time.perf_counter()
        try:
            self.conn.request("POST", path, json.dumps(body).encode(),
                              {"Content-Type": "application/json"})
            r = self.conn.getresponse()
            data = r.read()
        except OSError:
            self.conn.close()
            self.conn = None
            return 0, b""
        self.latency_s[path[1:]].append(time.perf_counter() - t0)
        return r.status, data

    def one(self) -> None:
        if self.sent % 2 == 0 or self.last is None:
            i = int(self.rng.integers(2000))
            cands = self.rng.choice(len(self.item_ids), 100, replace=False)
            user = f"soak-u{i}"
            status, data = self._post("/recommend", {
                "user_id": user, "user": {"gender": "MF"[i % 2], "age": 18 + i % 50},
                "candidates": [self.item_ids[j] for j in cands], "k": 5})
            if status == 200:
                rec = json.loads(data)
                self.last = (user, rec["request_id"], rec["items"][0])
            else:
                self.failed += 1
        else:
            user, request_id, item = self.last
            status, _ = self._post("/feedback", {"type": "click", "user_id": user,
                                                 "request_id": request_id, "item_id": item})
            if status != 202:
                self.failed += 1

    def teardown(self) -> None:
        if self.conn is not None:
            self.conn.close()
