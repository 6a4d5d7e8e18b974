"""Background followers that keep a :class:`Recommender` current from Kafka.

Each runs one thread with its own ``KafkaConsumer`` (kafka-python clients are
not thread-safe), assigned to partitions directly — no consumer group, so a
server never joins or rebalances the workers' group and starts in seconds:

* :class:`PolicyFollower` — ``fairstream.policies`` partition 0 from the
  beginning. Every bundle is verified (:func:`stream.core.bundle.load_bundle`); one
  that fails is rejected, counted by reason and logged, and the served policy
  stays. A verified bundle newer than the served one is swapped in. Only
  bundles keyed by this server's ``kafka.group_id`` count: versions of
  different worker groups are not comparable.
* :class:`CatalogFollower` — ``fairstream.items`` through the worker's own
  :class:`~stream.kafka.catalog_feed.CatalogFeed` (embedding new items with the
  frozen encoder into a :class:`~stream.core.catalog.Catalog`), then swapping the
  catalog snapshot in.
* :class:`ProfileFollower` (``serve.profiles = "topic"``, the default) — every
  partition of the compacted ``fairstream.profiles.serving`` from the beginning: each
  user's latest profile as the workers learn it, a tombstone dropping one. The server
  is ready once it has read to the end, so it starts with every profile, and its reads
  follow the users whose profiles change, not the events (docs/scaling.md).
* :class:`FeedbackFollower` (``serve.profiles = "events"``) — every partition of
  ``fairstream.events`` from the end at start-up; clicks and purchases move user
  profiles (raw feedback, see :mod:`stream.serve.recommender`). Impressions are
  skipped, but fetched: its reads grow with all traffic.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from learners import Encoder
from stream.core.bundle import BundleError, PolicyBundle, load_bundle
from stream.core.catalog import Catalog
from stream.core.erasure import Erasures
from stream.core.keys import KeyRing
from stream.events import Click, EventCodec, Purchase
from stream.exceptions import InvalidEvent
from stream.kafka.catalog_feed import CatalogFeed
from stream.kafka.serving_profiles import decode_profile
from stream.metrics import ServeMetrics
from stream.serve.recommender import Recommender
from stream.settings import Settings

log = logging.getLogger(__name__)

_POLL_MS = 200


class _Follower:
    """One consumer, one thread: ``start``, ``stop``, ``caught_up`` (an Event)."""

    name = "follower"

    def __init__(self, settings: Settings, recommender: Recommender,
                 metrics: ServeMetrics) -> None:
        self.settings = settings
        self.recommender = recommender
        self.metrics = metrics
        self.caught_up = threading.Event()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.consumer: KafkaConsumer | None = None

    def _from_start(self, name: str, tp: TopicPartition) -> KafkaConsumer:
        """A consumer of one compacted partition, read from its beginning (no group)."""
        consumer = self._consumer(name)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        return consumer

    def _consumer(self, suffix: str, **config: Any) -> KafkaConsumer:
        k = self.settings.kafka
        return KafkaConsumer(bootstrap_servers=k.bootstrap, enable_auto_commit=False,
                             group_id=None, client_id=f"{k.client_id}-serve-{suffix}",
                             auto_offset_reset="earliest", **config)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name=f"serve-{self.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _main(self) -> None:
        try:
            self.consumer = self._open()
            while not self._stop.is_set():
                self._step()
        except Exception as exc:  # surfaced through /readyz and the log
            self.error = exc
            log.exception("%s follower stopped", self.name)
        finally:
            if self.consumer is not None:
                self.consumer.close()

    def _open(self) -> KafkaConsumer:
        raise NotImplementedError

    def _step(self) -> None:
        raise NotImplementedError

    def _at_end(self, tps: list[TopicPartition]) -> bool:
        for tp in tps:
            high = self.consumer.highwater(tp)
            if high is None:
                # Nothing fetched yet: ask the broker for the end offset itself.
                high = self.consumer.end_offsets([tp])[tp]
            if self.consumer.position(tp) < high:
                return False
        return True


class PolicyFollower(_Follower):
    """Follows fairstream.policies; verifies, keeps the newest, hot-swaps (see module doc)."""

    name = "policies"

    def __init__(self, settings: Settings, recommender: Recommender, metrics: ServeMetrics,
                 keep_versions: int = 16) -> None:
        super().__init__(settings, recommender, metrics)
        self.keep_versions = keep_versions
        self.bundles: OrderedDict[int, PolicyBundle] = OrderedDict()  # verified, by version
        self.pinned: int | None = None
        self.rejected = 0
        self._lock = threading.Lock()
        self._reload = threading.Event()
        self._tp = TopicPartition(settings.topics.policies, 0)
        self._keys = KeyRing.from_settings(settings.policy)  # the current key and the old

    def _open(self) -> KafkaConsumer:
        return self._from_start("policies", self._tp)

    def request_reload(self) -> None:
        """Re-read the topic from the beginning (admin): forgets kept bundles first."""
        self._reload.set()

    def _step(self) -> None:
        if self._reload.is_set():
            self._reload.clear()
            with self._lock:
                self.bundles.clear()
            self.caught_up.clear()
            self.consumer.seek_to_beginning(self._tp)
            log.info("re-reading %s from the beginning", self._tp.topic)
        batch = self.consumer.poll(timeout_ms=_POLL_MS)
        for records in batch.values():
            for record in records:
                self.handle(record.key, record.value, record.offset)
        if not self.caught_up.is_set() and self._at_end([self._tp]):
            self.caught_up.set()

    def handle(self, key: bytes | None, value: bytes | None, offset: int = -1) -> bool:
        """Verify one message of the policies topic; True if it became the served policy."""
        group = self.settings.kafka.group_id.encode()
        if key is not None and key != group:
            log.debug("skipping policy of group %r at offset %d", key, offset)
            return False
        if value is None:  # a compaction tombstone
            return False
        try:
            bundle = load_bundle(value, key=self._keys, dim=self.settings.features.dim)
        except BundleError as exc:
            self.rejected += 1
            self.metrics.policy_rejected.labels(reason=exc.reason).inc()
            log.warning("rejected policy bundle at offset %d: %s (still serving v%s)",
                        offset, exc, self.recommender.bundle.version
                        if self.recommender.bundle else "-")
            return False
        with self._lock:
            self.bundles[bundle.version] = bundle
            self.bundles.move_to_end(bundle.version)
            while len(self.bundles) > self.keep_versions:
                self.bundles.popitem(last=False)
            if self.pinned is not None:
                return False
            current = self.recommender.bundle
            if current is not None and bundle.version <= current.version:
                log.info("ignoring policy v%d: serving v%d", bundle.version, current.version)
                return False
            return self._swap(bundle)

    def _swap(self, bundle: PolicyBundle) -> bool:
        swapped = self.recommender.set_policy(bundle)
        if swapped:
            self.metrics.policy_swaps.inc()
            self.metrics.policy_version.set(bundle.version)
            self.metrics.policy_loaded_at.set(time.time())
            log.info("serving policy v%d (%s, created %s)", bundle.version,
                     bundle.feature_space, bundle.created_at)
        return swapped

    def kept(self, version: int) -> PolicyBundle | None:
        """A kept verified bundle by version (an experiment arm pinned to it), or None."""
        return self.bundles.get(version)

    def pin(self, version: int | None) -> PolicyBundle | None:
        """Serve a kept version until unpinned (``None``: back to the newest); None if unknown."""
        with self._lock:
            if version is None:
                self.pinned = None
                if not self.bundles:
                    return None
                newest = self.bundles[max(self.bundles)]
                self._swap(newest)
                return newest
            bundle = self.bundles.get(version)
            if bundle is None:
                return None
            self.pinned = version
            self._swap(bundle)
            return bundle


class CatalogFollower(_Follower):
    """Runs a :class:`~stream.kafka.catalog_feed.CatalogFeed` (the worker's too) and hands
    catalog snapshots over to the recommender."""

    name = "catalog"

    def __init__(self, settings: Settings, recommender: Recommender, metrics: ServeMetrics,
                 encoder: Encoder) -> None:
        super().__init__(settings, recommender, metrics)
        self.encoder = encoder
        self.catalog = Catalog(encoder.dim)
        self.feed = CatalogFeed(settings, self.catalog, encoder, client="serve-catalog")

    def _open(self) -> KafkaConsumer:
        return self.feed.open().consumer

    def _step(self) -> None:
        if self.feed.poll(timeout_ms=_POLL_MS):
            self.recommender.set_catalog(self.catalog.ids, self.catalog.embeddings,
                                         list(self.catalog.popularity))
            self.metrics.catalog_items.set(len(self.catalog))
        if not self.caught_up.is_set() and len(self.catalog) and self.feed.at_end():
            log.info("catalog: %d items", len(self.catalog))
            self.caught_up.set()


class FeedbackFollower(_Follower):
    """Feeds clicks/purchases on fairstream.events into the recommender's profiles."""

    name = "feedback"
    _IMPRESSION = b'{"type":"impression"'  # how msgspec writes them: skip without decoding

    def __init__(self, settings: Settings, recommender: Recommender,
                 metrics: ServeMetrics) -> None:
        super().__init__(settings, recommender, metrics)
        self.codec = EventCodec(settings.events.max_bytes, settings.events.max_slate,
                                settings.events.max_clock_skew_s)
        self.observed = 0
        self.erasures: Erasures | None = None  # the erasure follower's, once wired
        topic = settings.topics.events
        self._read = metrics.follow_records.labels(topic=topic)
        self._bytes = metrics.follow_bytes.labels(topic=topic)

    def _open(self) -> KafkaConsumer:
        # fairstream.events carries this server's own impressions too: fetch in large
        # batches (at most ~0.2 s old) instead of waking for every few records.
        consumer = self._consumer("feedback", fetch_min_bytes=1 << 20, fetch_max_wait_ms=200)
        topic = self.settings.topics.events
        deadline = time.monotonic() + 30
        parts = consumer.partitions_for_topic(topic)
        while not parts and time.monotonic() < deadline and not self._stop.is_set():
            time.sleep(0.2)
            parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise RuntimeError(f"topic {topic} has no partitions")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_end(*tps)
        for tp in tps:
            consumer.position(tp)  # resolve "the end" now, not at the first poll
        self.caught_up.set()
        return consumer

    def _step(self) -> None:
        batch = self.consumer.poll(timeout_ms=_POLL_MS, max_records=2000)
        for records in batch.values():
            for record in records:
                self.handle(record.value)
            self._read.inc(len(records))
            self._bytes.inc(sum(r.serialized_value_size for r in records))
        if batch:
            self.metrics.profile_users.set(len(self.recommender.profiles))

    def handle(self, value: Any) -> bool:
        if value is None or value.startswith(self._IMPRESSION):
            return False
        try:
            event = self.codec.decode(value)
        except InvalidEvent:
            return False  # the worker dead-letters it; the server just ignores it
        if isinstance(event, Click | Purchase):
            if self.erasures is not None and self.erasures.blocks(event.user_id, event.ts):
                return False  # an erased user's feedback from before the erasure
            kind = "click" if isinstance(event, Click) else "purchase"
            if self.recommender.observe_feedback(event.user_id, event.item_id, kind, event.ts):
                self.observed += 1
                return True
        return False


class ProfileFollower(_Follower):
    """Follows fairstream.profiles.serving into the recommender's profiles (module doc)."""

    name = "profiles"

    def __init__(self, settings: Settings, recommender: Recommender,
                 metrics: ServeMetrics) -> None:
        super().__init__(settings, recommender, metrics)
        self.topic = settings.topics.serving_profiles
        self.erasures: Erasures | None = None  # the erasure follower's, once wired
        self.applied = 0
        self._tps: list[TopicPartition] = []
        self._read = metrics.follow_records.labels(topic=self.topic)
        self._bytes = metrics.follow_bytes.labels(topic=self.topic)
        self._outcome = {o: metrics.profile_records.labels(outcome=o)
                         for o in ("profile", "tombstone", "erased", "invalid")}

    def _open(self) -> KafkaConsumer:
        consumer = self._consumer("profiles")
        deadline = time.monotonic() + 30
        parts = consumer.partitions_for_topic(self.topic)
        while not parts and time.monotonic() < deadline and not self._stop.is_set():
            time.sleep(0.2)
            parts = consumer.partitions_for_topic(self.topic)
        if not parts:
            raise RuntimeError(f"topic {self.topic} has no partitions")
        self._tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        consumer.assign(self._tps)
        consumer.seek_to_beginning(*self._tps)
        return consumer

    def _step(self) -> None:
        batch = self.consumer.poll(timeout_ms=_POLL_MS, max_records=5000)
        if batch:
            latest: dict[str, tuple[bytes | None, int]] = {}
            for records in batch.values():
                for record in records:  # a user's records are in one partition, in order
                    try:
                        latest[record.key.decode()] = (record.value, record.offset)
                    except (AttributeError, UnicodeDecodeError):  # no key, or not a pseudonym
                        self._outcome["invalid"].inc()
                self._read.inc(len(records))
                self._bytes.inc(sum(max(0, r.serialized_value_size) for r in records))
            self.apply(latest)
            self.metrics.profile_users.set(len(self.recommender.profiles))
        if not self.caught_up.is_set() and self._at_end(self._tps):
            log.info("profiles: %d users from %s", len(self.recommender.profiles), self.topic)
            self.caught_up.set()

    def apply(self, latest: dict[str, tuple[bytes | None, int]]) -> int:
        """Each user's latest record of a poll: a profile is set, a tombstone drops it, a
        profile older than its user's erasure is dropped too. Returns profiles set."""
        users, means, weights, last_seen, drop = [], [], [], [], []
        now, dim = time.time(), self.recommender.profiles.emb_dim
        blocks = self.erasures.blocks if self.erasures is not None else None
        fresh = []
        for user, (value, offset) in latest.items():
            if value is None:
                drop.append(user)
                self._outcome["tombstone"].inc()
                continue
            try:
                p = decode_profile(value, dim)
            except ValueError as exc:
                self._outcome["invalid"].inc()
                log.warning("skipping the serving profile at %s offset %d: %s", self.topic,
                            offset, exc)
                continue
            if blocks is not None and blocks(user, p.as_of):
                drop.append(user)  # learnt before the user's erasure
                self._outcome["erased"].inc()
                continue
            users.append(user)
            means.append(p.mean)
            weights.append(p.weight)
            last_seen.append(p.last_seen)
            fresh.append(now - p.as_of)
        self.recommender.set_profiles(users, means, weights, last_seen, drop)
        if users:
            self._outcome["profile"].inc(len(users))
            if self.caught_up.is_set():  # the backlog read at start is not freshness
                for age in fresh:
                    self.metrics.profile_freshness.observe(max(0.0, age))
        self.applied += len(users)
        return len(users)
