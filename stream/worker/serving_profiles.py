"""The worker's serving profiles: each changed user's profile, at most once per interval,
to the compacted ``fairstream.profiles.serving`` that servers read instead of the events.

What is written for a user is a function of the worker's state alone: the profile it has
learnt (impressions whose attribution window closed) with the feedback already joined to
the user's **open** impressions folded on top, in impression-time order — what the
learnt profile will be once those windows close, if nothing else comes. So a click moves
the served profile as soon as the worker has read it (plus at most
``worker.serving_profiles_every_s``), not an attribution window later, and the server
scores with the profile the model learns from (joined feedback, not every raw click).

A record is rewritten, never accumulated: after a crash the worker replays from its
checkpoint and writes the same profiles again, so nothing is counted twice. Users are
coalesced: however many events a user has in an interval, one record. An erased user
gets a tombstone at once; :meth:`settle` (a checkpoint) waits for the acknowledgements,
so a checkpoint that no longer holds an erased user never precedes the tombstone.

The open impressions with feedback are tracked per user (``request id``\\s, bounded by
the join's own open impressions); after a restart the index starts empty and fills
as feedback arrives, and the learnt profile is rewritten when those impressions close.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence

from kafka import KafkaProducer

from stream.core.erasure import Erasures
from stream.core.join import Pending
from stream.core.state import LearningState
from stream.events import Feedback, Shown
from stream.kafka.serving_profiles import encode_profile
from stream.metrics import Metrics
from stream.settings import Settings

log = logging.getLogger(__name__)


class ServingProfiles:
    """Dirty users in, one record per user per interval out (see module doc)."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.topic = settings.topics.serving_profiles
        self.every_s = settings.worker.serving_profiles_every_s
        self.producer: KafkaProducer | None = None
        self._dirty: dict[str, None] = {}  # users to write, in the order they moved
        self._open: dict[str, dict[str, None]] = {}  # user -> open request ids with feedback
        self._as_of: dict[str, float] = {}  # user -> event time of its latest joined feedback
        self._last = time.monotonic()
        self._lock = threading.Lock()  # the producer's callbacks run on its thread
        self.failed = 0
        #: seconds the worker's loop spent here (marking users, building and sending
        #: records): what this room costs the learner (``fairstream bench serve-reads``)
        self.busy_s = 0.0

    def __repr__(self) -> str:
        return f"ServingProfiles(dirty={len(self._dirty)}, open_users={len(self._open)})"

    def open(self) -> ServingProfiles:
        k = self.settings.kafka
        self.producer = KafkaProducer(bootstrap_servers=k.bootstrap, acks="all", linger_ms=50,
                                      batch_size=512 * 1024,
                                      client_id=f"{k.client_id}-serving-profiles")
        return self

    def close(self) -> None:
        if self.producer is not None:
            self.producer.flush(timeout=10)
            self.producer.close()
            self.producer = None

    # -- what moved -------------------------------------------------------------------------

    def observed(self, state: LearningState, events: Sequence[Shown | Feedback]) -> None:
        """After a chunk went into the join: its feedback that joined an open impression
        marks the user (call with the state's lock held)."""
        t0 = time.perf_counter()
        pending = state.joiner.pending
        dirty, open_, as_of = self._dirty, self._open, self._as_of
        for e in events:
            if type(e) is Shown:
                continue
            p = pending(e.request_id)
            if p is None or p.user_id != e.user_id or not any(r > 0 for r in p.rewards):
                continue  # joined nothing (or a weight of 0): the profile does not move
            user = p.user_id
            open_.setdefault(user, {})[p.request_id] = None
            dirty[user] = None
            if e.ts > as_of.get(user, float("-inf")):
                as_of[user] = e.ts
        self.busy_s += time.perf_counter() - t0

    def learned(self, closed: Iterable[Pending]) -> None:
        """Closed impressions with a reward moved their users' learnt profiles."""
        t0 = time.perf_counter()
        dirty, as_of = self._dirty, self._as_of
        for p in closed:
            if any(r > 0 for r in p.rewards):
                dirty[p.user_id] = None
                if p.ts > as_of.get(p.user_id, float("-inf")):
                    as_of[p.user_id] = p.ts
        self.busy_s += time.perf_counter() - t0

    def forgotten(self, users: Iterable[str], erasures: Erasures) -> int:
        """Tombstones, at once, for erased users: ``users`` (whose learnt profiles were
        dropped) and any erased user this room tracks. Returns how many."""
        gone = set(users) | set(erasures.erased(list(self._open) + list(self._dirty)))
        for user in gone:
            self._open.pop(user, None)
            self._dirty.pop(user, None)
            self._as_of.pop(user, None)
            self._send(user, None)
        if gone:
            self.metrics.serving_profiles_written.labels(kind="tombstone").inc(len(gone))
            log.info("erasure: %d serving profile tombstone(s)", len(gone))
        return len(gone)

    # -- writing ----------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Users that moved since the last flush."""
        return len(self._dirty)

    def due(self, now: float) -> bool:
        return bool(self._dirty) and now - self._last >= self.every_s

    def flush(self, state: LearningState, lock: threading.Lock) -> int:
        """Write every user that moved since the last flush; returns how many."""
        self._last = time.monotonic()
        if not self._dirty:
            return 0
        t0 = time.perf_counter()
        with lock:
            records = [(user, self._value(state, user)) for user in self._dirty]
            self._dirty.clear()
        for user, value in records:
            self._send(user, value)
        tombstones = sum(value is None for _, value in records)
        if tombstones:
            self.metrics.serving_profiles_written.labels(kind="tombstone").inc(tombstones)
        self.metrics.serving_profiles_written.labels(kind="profile").inc(
            len(records) - tombstones)
        self.busy_s += time.perf_counter() - t0
        return len(records)

    def _value(self, state: LearningState, user: str) -> bytes | None:
        """The user's serving profile (see module doc); None (a tombstone) when the worker
        holds nothing of the user any more (evicted)."""
        folded_in = []
        rids = self._open.get(user)
        if rids:
            live = [p for p in map(state.joiner.pending, rids) if p is not None]
            if live:
                self._open[user] = {p.request_id: None for p in live}
                emb, index = state.catalog.embeddings, state.catalog.index
                for p in sorted(live, key=lambda p: p.ts):  # the order they will close in
                    folded_in += [(emb[index[item]], reward, p.ts)
                                  for item, reward in zip(p.items, p.rewards, strict=True)
                                  if reward > 0 and item in index]
            else:
                del self._open[user]
        profile = state.profiles.folded(user, folded_in)
        as_of = self._as_of.get(user)
        if user not in self._open:
            self._as_of.pop(user, None)
        if profile is None:
            return None
        mean, weight, last_seen = profile
        return encode_profile(mean, weight, last_seen,
                              last_seen if as_of is None else max(as_of, last_seen))

    def _send(self, user: str, value: bytes | None) -> None:
        future = self.producer.send(self.topic, key=user.encode(), value=value)
        future.add_errback(self._failed)

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self.failed += 1
        self.metrics.serving_profiles_written.labels(kind="failed").inc()
        log.warning("a serving profile was not written: %s (rewritten when the user moves "
                    "again)", exc)

    def settle(self) -> None:
        """Wait until every record sent is acknowledged (before a checkpoint)."""
        if self.producer is not None:
            self.producer.flush(timeout=30)
