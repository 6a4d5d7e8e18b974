"""The statistics exchange: several workers of one group, one global model.

Each worker learns the events partitions the group assigned it. For each of them it
accumulates what the partition taught since its last delta, and sends it as a
:class:`~stream.core.delta.StatsDelta` to the same-numbered partition of
``fairstream.stats``, with the partition's user state. It reads every partition of
``fairstream.stats`` (assigned, no group) and folds a delta only when the delta starts
where its state of that partition stands (:meth:`LearningState.absorb`): its own deltas
and deltas already folded are skipped, so rereading after a crash or a rebalance
changes nothing. The owner of events partition 0 is the group's one publisher. The
design, and what it does not cover, is ``docs/scaling.md``.

Order of events on a rebalance (the worker loop calls these): :meth:`settle` (through
the checkpoint before a revocation) sends every owned partition's delta and flushes;
:meth:`revoked` forgets the partitions; :meth:`assigned` reads ``fairstream.stats`` to
its end *before* the worker seeks its new partitions to the state's offsets.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from bandits import FeatureSpaceMismatch
from learners import FeatureMap
from stream.core.delta import (
    RebaseMarker,
    StatsAccumulator,
    StatsDelta,
    cut_delta,
    delta_span,
    dump_delta,
    dump_marker,
    fold_delta,
    is_marker,
    load_delta,
    load_marker,
    marker_header,
    span_header,
)
from stream.core.join import Pending
from stream.core.state import Learned, LearningState, Observed
from stream.exceptions import DeltaError, FairstreamError
from stream.kafka.policy_log import latest_bundle
from stream.kafka.profile_changelog import ProfileChangelog
from stream.kafka.tail import read_to_end
from stream.kafka.wire import Chunk
from stream.metrics import Metrics
from stream.settings import Settings

log = logging.getLogger(__name__)


class StatsExchange:
    """Send the owned partitions' deltas, fold everyone else's (see module doc).

    ``source`` names this worker in the deltas it sends (logs, conflict reports);
    ``on_experiment`` takes the experiment rows of every delta it folds (the worker's
    experiment results, :meth:`ExperimentResultsRoom.absorb`).
    """

    def __init__(self, settings: Settings, metrics: Metrics, source: str,
                 on_experiment: Callable[[list[list[Any]]], None] | None = None) -> None:
        s = settings
        self.settings, self.metrics, self.source = settings, metrics, source
        self.on_experiment = on_experiment
        self.topic = s.topics.stats
        self.key = s.policy.signing_key.encode()
        k, limit = s.kafka, s.stats.max_delta_bytes
        self.producer = KafkaProducer(bootstrap_servers=k.bootstrap, acks="all", linger_ms=5,
                                      max_request_size=limit, client_id=f"{k.client_id}-stats",
                                      compression_type=None if s.stats.compression == "none"
                                      else s.stats.compression)
        self.consumer = KafkaConsumer(bootstrap_servers=k.bootstrap, enable_auto_commit=False,
                                      client_id=f"{k.client_id}-stats-reader",
                                      fetch_max_wait_ms=20,  # read_to_end: fresh ends
                                      max_partition_fetch_bytes=limit, fetch_max_bytes=limit)
        self.state: LearningState | None = None
        self.lock: threading.Lock | None = None
        self.owned: set[int] = set()
        self._emitted: dict[int, int] = {}  # owned partition -> start of its next delta
        self._acc: dict[int, StatsAccumulator] = {}
        self._users: dict[int, dict[str, None]] = {}  # users whose profiles moved, in order
        self._seen: dict[int, list[str]] = {}
        self._experiment: dict[int, list[list[Any]]] = {}  # rows counted, by partition
        self._tps: list[TopicPartition] = []
        self._last_emit = time.monotonic()
        self.changelog = ProfileChangelog(settings)
        self._unlogged: list[tuple[StatsDelta, Any]] = []  # sent, not yet in the changelog
        # Partitions this worker gave up, and the offset its profiles of them are current at.
        self._current: dict[int, int] = {}
        # The users whose profiles this worker holds, by partition: given back (dropped)
        # once a rebalance hands their partition to another worker.
        self._members: dict[int, set[str]] = {}
        self._forgotten: set[str] = set()  # erased since the last settle
        self._own_end: dict[int, int] = {}  # partition -> offset after its last own delta
        # Coordinated fine-tunes: records of a stats partition held back behind a marker
        # of a later epoch than the switch in progress (folded once it completes).
        self._held: dict[int, list[Any]] = {}
        self._switched = False  # a switch completed since take_switched()
        self._adopted: FeatureMap | None = None  # the latest bundle's map, at start

    # -- start ----------------------------------------------------------------------------

    def adopted_feature_map(self) -> FeatureMap | None:
        """The feature map of the group's latest published policy (None when there is none):
        a worker without a checkpoint starts in it, so its statistics join the group's."""
        bundle = latest_bundle(self.settings)
        self._adopted = None if bundle is None else bundle.fmap
        return self._adopted

    def bind(self, state: LearningState, lock: threading.Lock) -> None:
        """Read ``fairstream.stats`` from the state's positions (the start without) and fold
        what it has not folded yet: the state restored from a checkpoint, or fresh."""
        self.state, self.lock = state, lock
        parts = self.consumer.partitions_for_topic(self.topic) or set()
        n = self.settings.kafka.events_partitions
        if len(parts) < n:
            raise FairstreamError(
                f"{self.topic} has {len(parts)} partitions, fewer than the {n} of "
                f"{self.settings.topics.events}: recreate it (fairstream topics create)")
        self._tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        self.consumer.assign(self._tps)
        for tp in self._tps:
            if tp.partition in state.stats_positions:
                self.consumer.seek(tp, state.stats_positions[tp.partition])
            else:
                self.consumer.seek_to_beginning(tp)
        rebuild = (state.coordinated and self._adopted is not None and not state.offsets
                   and not state.stats_positions
                   and state.fmap.feature_space == self._adopted.feature_space)
        if rebuild:  # no checkpoint, in the latest bundle's space: maybe not the first
            state.unbased = set(range(n))
        self.catch_up()
        self.metrics.stats_epoch.set(state.epoch)
        if rebuild:
            # Every marker of the space it started in has been read: what is still
            # unbased never had statistics, and what was held goes the usual way now.
            state.unbased.clear()
            log.info("rebuilt from %s at epoch %d", self.topic, state.epoch)
            self._release_held()

    # -- folding ----------------------------------------------------------------------------

    def catch_up(self, timeout_s: float = 120.0) -> int:
        """Fold everything on the topic up to its current end (but the partitions this
        worker owns: their deltas are its own); returns the rows folded."""
        rows = 0
        tps = [tp for tp in self._tps if tp.partition not in self.owned]
        for rec in read_to_end(self.consumer, tps, timeout_s):
            rows += self._fold(rec)
        self._update_lag()
        return rows

    def poll(self, timeout_ms: int = 0) -> int:
        """Fold what one poll brings; returns the rows folded."""
        if self.owned.issuperset(tp.partition for tp in self._tps):
            return 0  # every partition is this worker's: nothing to fold (one worker)
        rows = 0
        for records in self.consumer.poll(timeout_ms=timeout_ms).values():
            for rec in records:
                rows += self._fold(rec)
        self._update_lag()
        return rows

    def _fold(self, rec: Any) -> int:
        m = self.metrics
        stats_partition, offset = rec.partition, rec.offset
        if stats_partition in self._held:  # behind an early marker: in order, later
            self._held[stats_partition].append(rec)
            return 0
        if is_marker(rec.headers):
            self._fold_marker(rec)
            return 0
        span = delta_span(rec.headers)
        if span is not None:
            # Decided before decoding: a delta that does not start where this worker's
            # state of its partition stands (its own, or one folded already) is skipped
            # unread. The header is not signed; one that says "foldable" is checked
            # against the signed content below.
            with self.lock:
                if self.state.offsets.get(span[0], -1) != span[1]:
                    self.state.stats_positions[stats_partition] = offset + 1
                    m.stats_skipped.inc()
                    return 0
        try:
            delta = load_delta(rec.value, key=self.key)
            if span is not None and span != (delta.partition, delta.start, delta.end):
                raise DeltaError("format", f"header {span} does not match the content")
        except DeltaError as exc:
            m.stats_rejected.labels(reason=exc.reason).inc()
            log.error("refused delta at %s/%d/%d: %s", self.topic, stats_partition, offset, exc)
            delta = None
        with self.lock:
            state = self.state
            state.stats_positions[stats_partition] = offset + 1
            if delta is None:
                return 0
            p = delta.partition
            if state.offsets.get(p, -1) != delta.start:
                m.stats_skipped.inc()
                return 0
            if p in self.owned:
                # Another worker sent a delta for a partition this one owns and stands at:
                # a zombie. Folding it would move the offset under the fetch; do not.
                m.stats_conflicts.inc()
                log.error("delta %r for partition %d, which this worker owns", delta, p)
                return 0
            try:  # profiles: restored from their changelog if this worker takes p
                fold_delta(state, delta, profiles=False)
            except FeatureSpaceMismatch as exc:
                m.stats_rejected.labels(reason="feature_space").inc()
                log.error("delta %r not folded: %s", delta, exc)
                return 0
            # Under the lock, with the offsets it moved: a checkpoint holds both or neither.
            if delta.experiment and self.on_experiment is not None:
                self.on_experiment(delta.experiment)
        m.stats_folded.inc()
        return delta.rows

    # -- coordinated fine-tunes: epochs and re-bases (docs/scaling.md) --------------------

    def _fold_marker(self, rec: Any) -> None:
        m = self.metrics
        try:
            marker = load_marker(rec.value, key=self.key)
        except DeltaError as exc:
            m.stats_rejected.labels(reason=exc.reason).inc()
            log.error("refused re-base marker at %s/%d/%d: %s", self.topic, rec.partition,
                      rec.offset, exc)
            with self.lock:
                self.state.stats_positions[rec.partition] = rec.offset + 1
            return
        with self.lock:
            state = self.state
            started = state.switch is None
            if marker.partition in self.owned:
                m.stats_conflicts.inc()
                log.error("re-base marker %r for partition %d, which this worker owns",
                          marker, marker.partition)
                outcome = "skipped"
            else:
                outcome = state.fold_marker(marker)
            if outcome == "early":  # wait for the switch in progress: hold this partition
                self._held[rec.partition] = [rec]
                return
            state.stats_positions[rec.partition] = rec.offset + 1
            started = started and (state.switch is not None or outcome == "switched")
        if outcome == "refused":
            m.stats_rejected.labels(reason="feature_space").inc()
            log.error("re-base marker %r refused (not the epoch in progress, or a gap)", marker)
        if started:
            m.stats_epochs_started.inc()
            log.info("epoch %d: switching to %s (announced by %s)", marker.epoch,
                     marker.feature_space, marker.source)
        self._rebased(outcome)
        self.rebase_owned()

    def _rebased(self, outcome: str) -> None:
        """Count a re-base outcome; after a completed switch, fold what was held back."""
        m = self.metrics
        m.stats_rebases.labels(outcome=outcome).inc()
        m.stats_rebase_pending.set(self.state.rebase_pending())
        m.stats_epoch.set(self.state.epoch)
        if outcome != "switched":
            return
        m.stats_epochs_completed.inc()
        log.info("epoch %d: every partition re-based; now in %s", self.state.epoch,
                 self.state.fmap.feature_space)
        self._switched = True
        self._release_held()

    def _release_held(self) -> None:
        held, self._held = self._held, {}
        for records in held.values():
            for rec in records:
                self._fold(rec)

    def take_switched(self) -> bool:
        """Whether a switch completed since the last call (the publisher publishes then)."""
        switched, self._switched = self._switched, False
        return switched

    def announce(self, fmap: FeatureMap) -> None:
        """The trainer's adopted fine-tune: start the next epoch in ``fmap`` here, and cut
        the partitions this worker owns (their markers announce it to the others)."""
        with self.lock:
            epoch = self.state.epoch + 1
            self.state.begin_epoch(epoch, fmap)
        self.metrics.stats_epochs_started.inc()
        self.metrics.stats_rebase_pending.set(self.state.rebase_pending())
        log.info("epoch %d: announcing %s", epoch, fmap.feature_space)
        self.rebase_owned()

    def rebase_owned(self) -> None:
        """During a switch, cut every owned partition not re-based yet: its last old-space
        delta, then its marker (after the delta, on its stats partition), then its re-base
        here. From then on its rows are learnt in the new space."""
        state = self.state
        if state is None or state.switch is None:
            return
        for p in sorted(self.owned):
            with self.lock:
                sw = state.switch
                if sw is None or p in sw.rebased:
                    continue
                delta = self._delta(p)
                self._acc.pop(p, None)
                at = state.offsets.get(p, -1)
            if delta is not None:
                self._send(delta)
                self.metrics.stats_sent.inc()
                self.producer.flush()  # the delta before the marker on the partition
            marker = RebaseMarker(partition=p, epoch=sw.epoch, at=at,
                                  feature_space=sw.fmap.feature_space,
                                  adapter=sw.fmap.adapter.to_bytes(), source=self.source)
            self.producer.send(self.topic, partition=p, key=str(p).encode(),
                               value=dump_marker(marker, key=self.key),
                               headers=marker_header(marker))
            with self.lock:
                outcome = state.rebase(p, sw.epoch, at)
            self._rebased(outcome)

    def _update_lag(self) -> None:
        # highwater() is what the last fetch answered with: no request of its own.
        lag = 0
        for tp in self._tps:
            high = self.consumer.highwater(tp)
            if high is not None and tp.partition not in self.owned:
                lag += max(0, high - self.consumer.position(tp))
        self.metrics.stats_lag.set(lag)

    # -- what the worker learnt -------------------------------------------------------------

    def observed(self, chunk: Chunk, observed: Observed) -> None:
        """Remember the event ids an owned partition's chunk added to the dedup memory."""
        left_out = set(observed.unknown)
        self._seen.setdefault(chunk.partition, []).extend(
            e.event_id for i, e in enumerate(chunk.events) if i not in left_out)

    def learned(self, closed: list[Pending], learned: Learned) -> None:
        """Add a learnt batch's rows to their partitions' accumulators."""
        if not learned.rows:
            return
        for pending in closed:
            self._users.setdefault(pending.partition, {})[pending.user_id] = None
            self._members.setdefault(pending.partition, set()).add(pending.user_id)
        parts = learned.partitions
        present = np.unique(parts).tolist()
        if len(present) == 1:  # the usual batch: one poll's partition, no copies
            acc = self._accumulator(present[0])
            if learned.stats is not None and learned.stats.feature_space == acc.feature_space:
                acc.add_stats(learned.stats)  # summed once, by the policy's update
            else:
                acc.add(learned.X, learned.rewards,
                        None if learned.item_ids is None else list(learned.item_ids))
            return
        ids = None if learned.item_ids is None else np.asarray(learned.item_ids, dtype=object)
        for p in present:
            rows = np.flatnonzero(parts == p)
            self._accumulator(p).add(learned.X[rows], learned.rewards[rows],
                                     None if ids is None else ids[rows].tolist())

    def counted(self, rows: list[tuple[int, list[Any]]]) -> None:
        """Keep the experiment rows the worker counted from its partitions (``(events
        partition, row)``): each goes out with its partition's next delta."""
        for p, row in rows:
            self._experiment.setdefault(p, []).append(row)

    def _accumulator(self, p: int) -> StatsAccumulator:
        acc = self._acc.get(p)
        if acc is None:
            policy = self.state.space_of(p)[1]  # the new space's once p has re-based
            acc = self._acc[p] = StatsAccumulator(
                policy.dim, policy.feature_space, getattr(policy, "z", None)
                if policy.uses_item_ids else None)
        return acc

    # -- sending ----------------------------------------------------------------------------

    def due(self, now: float) -> bool:
        return now - self._last_emit >= self.settings.stats.emit_every_s

    def emit(self) -> int:
        """Send one delta per owned partition that moved since its last; returns how many."""
        sent = 0
        with self.lock:
            deltas = [self._delta(p) for p in sorted(self.owned)]
        for delta in deltas:
            if delta is None:
                continue
            self._send(delta)
            sent += 1
        self.metrics.stats_sent.inc(sent)
        self._last_emit = time.monotonic()
        return sent

    def _send(self, delta: StatsDelta) -> None:
        future = self.producer.send(self.topic, partition=delta.partition,
                                    key=str(delta.partition).encode(),
                                    value=dump_delta(delta, key=self.key),
                                    headers=span_header(delta))
        self._unlogged.append((delta, future))

    def _delta(self, p: int) -> StatsDelta | None:
        state = self.state
        end = state.offsets.get(p)
        start = self._emitted.get(p, -1)
        if end is None or end == start:
            return None
        acc = self._acc.pop(p, None)
        stats = acc.take() if acc is not None else self._accumulator(p).take()
        self._acc.pop(p, None)
        self._emitted[p] = end
        return cut_delta(state, p, start, stats, list(self._users.pop(p, {})),
                         self._seen.pop(p, []), source=self.source,
                         experiment=self._experiment.pop(p, []))

    def start_settle(self) -> None:
        """A checkpoint's first step: send what the owned partitions learnt, without
        waiting (the checkpoint encodes the state meanwhile; :meth:`settle` waits)."""
        self.emit()

    def settle(self) -> None:
        """Send what the owned partitions learnt (nothing right after
        :meth:`start_settle`) and wait for the broker's acks (the deltas are the durable
        record other workers fold), then write their profiles to the changelog, after them (see
        :mod:`stream.kafka.profile_changelog`), and wait for those acks too."""
        self.emit()
        self.producer.flush()
        for delta, future in self._unlogged:
            offset = future.get(timeout=60).offset
            self._own_end[delta.partition] = max(self._own_end.get(delta.partition, 0),
                                                 offset + 1)
            self.changelog.write(delta, offset)
        self._unlogged.clear()
        # Erased users leave the changelog (chunks holding them are rewritten without
        # them), and chunks mostly superseded are repacked: from the profiles as they
        # stand now, which is as of each owned partition's last delta (just sent).
        if self._forgotten:
            self.changelog.forget(self._forgotten)
            self._forgotten.clear()
        with self.lock:
            self.changelog.compact(self.state.profiles,
                                   {p: self._emitted[p] for p in self.owned
                                    if p in self._emitted})
        self.changelog.flush()

    def forgotten(self, users: list[str]) -> None:
        """Users just erased from the profiles (:mod:`stream.worker.erasure`): their
        profiles leave the changelog at the next :meth:`settle` (the caller checkpoints)."""
        self._forgotten.update(users)

    # -- ownership --------------------------------------------------------------------------

    @property
    def publishes(self) -> bool:
        """Whether this worker publishes the merged policy: it owns events partition 0."""
        return 0 in self.owned

    def assigned(self, partitions: list[int]) -> bool:
        """Take partitions: fold the topic to its end first, so the state's offsets are
        where their last deltas end. Returns True when this makes it the publisher (its
        version counter then stands past the last published version)."""
        self.catch_up()
        was = self.publishes
        with self.lock:
            for p in [p for p in self._current if p not in partitions]:  # now another's
                self.state.profiles.drop(list(self._members.pop(p, ())))
                self.changelog.drop(p)
                del self._current[p]
            for p in partitions:
                end = self.state.offsets.get(p, -1)
                if self._current.pop(p, None) != end:  # not its own, current profiles
                    restored = self.changelog.restore(self.state.profiles, p, end)
                    self._members.setdefault(p, set()).update(restored.users)
                    self.metrics.stats_restore_seconds.observe(restored.seconds)
                    self.metrics.stats_restored_profiles.inc(
                        restored.from_changelog + restored.from_deltas)
                    log.info("partition %d: restored %d profiles from the changelog and %d "
                             "from deltas in %.2fs", p, restored.from_changelog,
                             restored.from_deltas, restored.seconds)
                self.owned.add(p)
                self._emitted[p] = self.state.offsets.get(p, -1)
                self._acc.pop(p, None)
                self._users.pop(p, None)
                self._seen.pop(p, None)
                self._experiment.pop(p, None)
        # Its own partitions' deltas are this worker's: not fetched while it owns them.
        self.consumer.pause(*[tp for tp in self._tps if tp.partition in self.owned])
        if self.publishes and not was:
            bundle = latest_bundle(self.settings)
            if bundle is not None:
                with self.lock:
                    self.state.skip_versions_to(bundle.version)
        self.metrics.stats_publisher.set(1 if self.publishes else 0)
        self.rebase_owned()  # a switch in progress: partitions taken before their cut
        return self.publishes and not was

    def revoked(self, partitions: list[int]) -> None:
        """Give partitions up (after :meth:`settle` sent their last deltas), and read
        their deltas again from after the last one this worker sent."""
        for p in partitions:
            if p in self.owned:
                self._current[p] = self.state.offsets.get(p, -1)
                tp = TopicPartition(self.topic, p)
                if tp in self._tps:
                    position = max(self.consumer.position(tp), self._own_end.get(p, 0))
                    self.consumer.seek(tp, position)
                    self.consumer.resume(tp)
                    with self.lock:
                        self.state.stats_positions[p] = position
            self.owned.discard(p)
            self._emitted.pop(p, None)
        self.metrics.stats_publisher.set(1 if self.publishes else 0)

    def close(self) -> None:
        self.producer.flush()
        self.producer.close()
        self.consumer.close()
        self.changelog.close()
