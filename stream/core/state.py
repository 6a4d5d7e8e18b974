"""The worker's learning state, and how events move it.

:class:`LearningState` composes the reward join, dedup, user profiles, feature map
and bandit policy over a :class:`~stream.core.catalog.Catalog`, and is what a
checkpoint captures. It keeps its own invariants: the events it has seen (dedup),
the offset up to which each partition has been observed, and the number of the last
published policy move only through its methods. Nothing here touches Kafka: the
worker hands it each partition's compact records as the fetch process sent them.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import msgspec
import numpy as np

from bandits import (
    FairnessTracker,
    Policy,
    SufficientStats,
    dump_snapshot,
    load_snapshot,
    policy_from_config,
    predicted_reward,
)
from learners import (
    Adapter,
    DriftMonitor,
    FeatureMap,
    FineTuneResult,
    PartitionSample,
    ProfileStore,
    ReplayBuffer,
    ReplayRows,
    SampleRows,
    refit_statistics,
    replay_rows,
    row_hashes,
)
from learners.adapter import Adapter as _Adapter
from learners.features import AGE_BUCKETS, GENDERS, UNKNOWN, attr_codes, context_columns
from stream.core.catalog import Catalog
from stream.core.checkpoint import Checkpoint
from stream.core.delta import RebaseMarker
from stream.core.join import Pending, RewardJoiner, SeenIds
from stream.core.keys import KeyRing
from stream.events import Click, Event, Feedback, Impression, Purchase, Shown
from stream.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Learned:
    """What one batch of closed impressions taught the policy."""

    rows: int = 0
    #: the rows themselves: φ (rows, dim), rewards, item ids (None unless the policy uses
    #: them) and each row's events partition (what a statistics delta is cut by)
    X: np.ndarray | None = None
    rewards: np.ndarray | None = None
    item_ids: list[str] | None = None
    partitions: np.ndarray | None = None
    #: the rows' statistics as the policy's update summed them (hybrid policies; None
    #: otherwise, and during a switch): a statistics delta adds these, not the rows again
    stats: SufficientStats | None = None
    reward_by_user_group: dict[str, list[float]] = field(default_factory=dict)  # [sum, n]
    exposure_by_item_group: dict[str, float] = field(default_factory=dict)


@dataclass
class Switch:
    """A feature-space switch in progress (one coordinated fine-tune, docs/scaling.md):
    the new space of epoch ``epoch`` and the model built in it beside the serving one,
    from the re-based partitions (``rebased``) and their deltas after their markers."""

    epoch: int
    fmap: FeatureMap
    policy: Policy
    rebased: set[int] = field(default_factory=set)
    #: rows learnt in the new space so far (re-based partitions' rows after their cut)
    rows: int = 0


@dataclass
class Observed:
    """What one partition's records did to the state: impressions whose window closed
    (in closing order), valid events by type, and the events left out — by index into
    the records, those naming an item the catalog does not hold; by count, duplicates."""

    closed: list[Pending] = field(default_factory=list)
    kinds: dict[str, int] = field(
        default_factory=lambda: {"impression": 0, "click": 0, "purchase": 0})
    unknown: list[int] = field(default_factory=list)
    duplicates: int = 0


class LearningState:
    """Catalog + join + profiles + φ + policy: everything a checkpoint captures.

    >>> import numpy as np
    >>> from stream.core.catalog import Catalog
    >>> from stream.events import CatalogItem, Click, Impression
    >>> from stream.settings import Settings
    >>> class Random:  # an encoder stand-in
    ...     dim = 384
    ...     def embed(self, texts):
    ...         return np.random.default_rng(len(texts)).normal(size=(len(texts), 384))
    >>> catalog = Catalog()
    >>> _ = catalog.add([CatalogItem(item_id=str(i), text=f"film {i}") for i in range(40)],
    ...                 Random())
    >>> state = LearningState.fresh(Settings(), catalog)
    >>> closed = state.observe(Impression(event_id="e1", request_id="r1", ts=0.0, user_id="u",
    ...                                   items=["3"], propensities=[1.0],
    ...                                   policy_version="p"), partition=0)
    >>> closed += state.observe(Click(event_id="e2", request_id="r1", ts=1.0, user_id="u",
    ...                               item_id="3"), partition=0)
    >>> closed += state.close_open()
    >>> [p.rewards for p in closed], state.learn(closed).rows, state.policy.n_updates
    ([[1.0]], 1, 1)
    """

    def __init__(self, settings: Settings, catalog: Catalog, fmap: FeatureMap, policy: Policy,
                 profiles: ProfileStore | None = None) -> None:
        ev, feat = settings.events, settings.features
        self.settings = settings
        self.catalog = catalog
        self.fmap = fmap
        self.policy = policy
        # `is None`, not falsy: an empty store given (a disk store) is the one to use.
        self.profiles = profiles if profiles is not None else ProfileStore(
            emb_dim=catalog.embeddings.shape[1], decay=feat.profile_decay,
            capacity=feat.profile_capacity)
        self.joiner = RewardJoiner(ev.attribution_window_s,
                                   {"click": ev.click_weight, "purchase": ev.purchase_weight})
        self.seen = SeenIds(ev.dedup_capacity)
        self.fairness = FairnessTracker(window=settings.fairness.window)
        ft = settings.finetune
        #: fine-tunes coordinated across the workers of a group (statistics exchange on):
        #: per-partition bottom-k samples instead of the replay buffer, epochs, re-bases
        self.coordinated = ft.enabled and settings.stats.exchange
        local = ft.enabled and not self.coordinated
        # What a fine-tune trains on and the bandit is rebuilt from (NeuralLinear). Not in
        # checkpoints: after a restart it refills before the next fine-tune is due.
        self.buffer = (ReplayBuffer(capacity=ft.buffer_capacity, seed=feat.seed,
                                    emb_dim=catalog.embeddings.shape[1])
                       if local else None)
        # The last rows learned, and what the policy predicted for each before learning it
        # (prequential): what a swap is judged on (see swap).
        self.recent = (ReplayBuffer(capacity=ft.validation_rows, policy="window",
                                    emb_dim=catalog.embeddings.shape[1])
                       if local else None)
        #: coordinated: each events partition's sample of its learnt rows (identical on
        #: every worker: learners.sample), in checkpoints
        self.samples: dict[int, PartitionSample] | None = {} if self.coordinated else None
        self.sample_capacity = max(1, ft.buffer_capacity // settings.kafka.events_partitions)
        #: the epoch of the current feature space (0: the one the group started in)
        self.epoch = 0
        self.switch: Switch | None = None
        #: rows of the whole group learnt in the current space since its epoch began (the
        #: same on every worker once it has folded the same deltas): what the trainer's
        #: ``finetune.every_updates`` counts, so a new publisher counts on
        self.rows_in_epoch = 0
        #: partitions whose statistics in the current space are not in the model yet: a
        #: worker without a checkpoint that starts in the latest bundle's space while it
        #: reads the topic (earlier epochs' deltas fold without their statistics, and the
        #: current epoch's markers re-base them); empty otherwise
        self.unbased: set[int] = set()
        self._predicted = np.zeros(ft.validation_rows)
        self._batch_of = np.zeros(ft.validation_rows, dtype=np.int64)  # first seq of its batch
        #: validation of the last swap considered: {"rows", "mse_current", "mse_rebuilt"}
        self.last_swap_check: dict[str, float] | None = None
        self.drift = DriftMonitor(delta=ft.drift_delta)
        self._offsets: dict[int, int] = {}  # partition -> next offset to observe
        self._offsets_view = MappingProxyType(self._offsets)
        #: per partition of the statistics topic, the next offset to read (scale-out)
        self.stats_positions: dict[int, int] = {}
        self._version = 0  # of the last published policy
        self._adapted = np.zeros((0, fmap.k_item))

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def fresh(cls, settings: Settings, catalog: Catalog, fmap: FeatureMap | None = None,
              profiles: ProfileStore | None = None) -> LearningState:
        """A new state in ``fmap``'s feature space (one adopted from a published policy),
        by default the PCA projection of the current catalog; ``profiles``: an empty store
        to learn them in (default: in memory)."""
        if fmap is None:
            feat = settings.features
            adapter = Adapter.from_pca(catalog.embeddings,
                                       out_dim=FeatureMap.adapter_dim(feat.dim), seed=feat.seed)
            fmap = FeatureMap(adapter, dim=feat.dim)
        return cls(settings, catalog, fmap, new_policy(settings, fmap), profiles)

    # -- learning -----------------------------------------------------------------------------

    def adapted_items(self, rows: np.ndarray) -> np.ndarray:
        """Adapted embeddings of catalog rows, cached per feature space as the catalog grows."""
        n = len(self.catalog)
        if len(self._adapted) < n:
            self._adapted = np.vstack(
                [self._adapted, self.fmap.adapt(self.catalog.embeddings[len(self._adapted):n])])
        return self._adapted[rows]

    def features(self, user_id: str, user: dict[str, Any], item_ids: Sequence[str],
                 now: float, profile: np.ndarray | None = None) -> np.ndarray:
        rows = np.fromiter((self.catalog.index[i] for i in item_ids), dtype=np.intp,
                           count=len(item_ids))
        if profile is None:
            profile = self.profiles.get(user_id, now=now)
        return self.fmap.transform(None, profile, user, adapted_items=self.adapted_items(rows))

    def observe(self, event: Event, partition: int) -> list[Pending]:
        """Feed one valid, non-duplicate event (a full record, not checked against the
        catalog, not deduplicated); returns impressions whose window closed."""
        if isinstance(event, Impression):
            return self.joiner.add_impression(partition, Pending(
                event.request_id, event.user_id, event.ts, tuple(event.items),
                tuple(event.propensities), event.user, [0.0] * len(event.items),
                event.policy_version, partition,
                "" if event.experiment is msgspec.UNSET else event.experiment,
                "" if event.arm is msgspec.UNSET else event.arm))
        kind = "click" if isinstance(event, Click) else "purchase"
        assert isinstance(event, Click | Purchase)
        return self.joiner.add_feedback(partition, event.request_id, event.item_id, kind,
                                        event.ts, event.user_id)

    def observe_records(self, partition: int, events: Sequence[Shown | Feedback],
                        next_offset: int) -> Observed:
        """One partition's valid records of one poll, in offset order: catalog check,
        dedup, join; then the partition's offset moves to ``next_offset``.

        The loop runs once per event, so what it calls per event is bound to locals
        first. An event naming an unknown item is left out (and not marked seen: it is
        the caller's to dead-letter, by its index in ``events``)."""
        out = Observed()
        closed, kinds, unknown = out.closed, out.kinds, out.unknown
        known = self.catalog.index
        seen = self.seen.check_and_add
        add_impression, add_feedback = self.joiner.add_impression, self.joiner.add_feedback
        for i, event in enumerate(events):
            if type(event) is Shown:
                items = event.items  # one item, a replay's slate, skips the generator
                if not (items[0] in known if len(items) == 1
                        else all(item in known for item in items)):
                    unknown.append(i)
                elif seen(event.event_id):
                    out.duplicates += 1
                else:
                    kinds["impression"] += 1
                    # ``user`` is kept, not copied: nothing writes to it.
                    closed += add_impression(partition, Pending(
                        event.request_id, event.user_id, event.ts, tuple(items),
                        tuple(event.propensities), event.user, [0.0] * len(items),
                        event.policy_version, partition, event.experiment, event.arm))
            elif event.item_id not in known:
                unknown.append(i)
            elif seen(event.event_id):
                out.duplicates += 1
            else:
                kinds[event.kind] += 1
                closed += add_feedback(partition, event.request_id, event.item_id, event.kind,
                                       event.ts, event.user_id)
        self._offsets[partition] = next_offset
        return out

    def close_open(self, partitions: Iterable[int] | None = None) -> list[Pending]:
        """Close every impression still inside its window (a bounded run's end), of
        ``partitions`` only when given (those this worker owns)."""
        return self.joiner.flush(partitions)

    def absorb(self, partition: int, start: int, end: int) -> bool:
        """Move the partition's offset from ``start`` to ``end`` (statistics of that range
        were folded in from another worker); False, with nothing moved, unless the state
        stands at ``start`` (-1: nothing of the partition yet)."""
        if self._offsets.get(partition, -1) != start:
            return False
        self._offsets[partition] = end
        return True

    @property
    def offsets(self) -> Mapping[int, int]:
        """Per partition, the next offset to observe (read-only)."""
        return self._offsets_view

    @property
    def version(self) -> int:
        """The number of the last published policy."""
        return self._version

    def next_version(self) -> int:
        """Number the policy about to be published: one more than the last."""
        self._version += 1
        return self._version

    def skip_versions_to(self, version: int) -> None:
        """Never number a policy at or below ``version`` (one published after the
        checkpoint this state was restored from: servers only swap to a newer number)."""
        self._version = max(self._version, version)

    def drift_detected(self) -> bool:
        """Whether the reward drift detectors fired since the last call (latched)."""
        return self.drift.consume()

    def learn(self, closed: Iterable[Pending]) -> Learned:
        """One batched policy update from closed impressions (in closing order).

        Each impression's features use its user's profile as it stood before that
        impression's own feedback; the profile then absorbs the liked items. The
        profile walk is sequential; φ, the policy update and the replay-buffer insert
        are one batch each, so the result does not depend on how polls cut the stream.
        """
        closed = list(closed)
        learned = Learned()
        if not closed:
            return learned
        catalog = self.catalog
        emb, index, item_group = catalog.embeddings, catalog.index, catalog.popularity
        # Comprehensions over the batch, then one array each: per-row numpy assignments and
        # per-impression statements cost more than the bookkeeping they hold.
        rows_of = [[index[item] for item in p.items] for p in closed]
        rewards_of = [p.rewards for p in closed]
        codes_of = [attr_codes(p.user) for p in closed]
        labels_of = [_labels(*codes) for codes in codes_of]
        groups_of = [[item_group[r] for r in rows] for rows in rows_of]
        sizes = [len(rows) for rows in rows_of]
        rows_l = list(itertools.chain.from_iterable(rows_of))
        rewards_l = list(itertools.chain.from_iterable(rewards_of))
        # The sequential part: each impression sees its user's profile as it stood before
        # its own feedback, which then folds in.
        profiles = self.profiles.walk([p.user_id for p in closed], [p.ts for p in closed],
                                      rows_of, rewards_of, emb)
        # Drift detectors see each segment's rewards in order; segments are independent.
        by_segment: dict[str, list[float]] = {}
        for got, labels in zip(rewards_of, labels_of, strict=True):
            by_segment.setdefault(labels[0], []).extend(got)
        for segment, segment_rewards in by_segment.items():
            self.drift.update_many(segment_rewards, segment)
        n = len(rows_l)
        rows = np.array(rows_l, dtype=np.intp)
        owner = np.repeat(np.arange(len(closed)), sizes)
        codes = np.repeat(np.array(codes_of, dtype=np.int8).reshape(len(closed), 2), sizes,
                          axis=0)
        rewards = np.array(rewards_l, dtype=np.float64)
        # The fairness tracker sums the batch by group anyway; the counters take its totals.
        sums = self.fairness.observe_batch(groups_of, rewards_of, labels_of)
        learned.exposure_by_item_group.update(sums.exposure)
        for label, total in sums.rewards.items():
            learned.reward_by_user_group[label] = [total, sums.shown[label]]
        parts = np.fromiter((p.partition for p in closed), dtype=np.int64,
                            count=len(closed))[owner]
        ids = [catalog.ids[r] for r in rows_l] if self.policy.uses_item_ids else None
        sw = self.switch
        moved = (np.isin(parts, np.fromiter(sw.rebased, dtype=np.int64))
                 if sw is not None and sw.rebased else None)
        if moved is None or not moved.any():
            X = self.fmap.assemble(self.adapted_items(rows), self.fmap.adapt(profiles)[owner],
                                   codes[:, 0], codes[:, 1])
            if self.recent is not None:
                slots = (self.recent.seen + np.arange(n)) % len(self._predicted)
                self._predicted[slots] = predicted_reward(self.policy, X, ids)
                self._batch_of[slots] = self.recent.seen
            self.policy.update(X, rewards, item_ids=ids)
            batch_stats = getattr(self.policy, "batch_stats", None)
            learned.stats = batch_stats() if batch_stats is not None else None
            self.rows_in_epoch += n
        else:  # a switch: rows of re-based partitions go to the new space's model only
            X = np.empty((n, self.fmap.dim))
            for mask, fmap, policy in ((~moved, self.fmap, self.policy),
                                       (moved, sw.fmap, sw.policy)):
                idx = np.flatnonzero(mask)
                if not len(idx):
                    continue
                items = (self.adapted_items(rows[idx]) if fmap is self.fmap
                         else fmap.adapt(emb[rows[idx]]))
                X[idx] = fmap.assemble(items, fmap.adapt(profiles)[owner[idx]],
                                       codes[idx, 0], codes[idx, 1])
                policy.update(X[idx], rewards[idx],
                              item_ids=None if ids is None else [ids[i] for i in idx])
                if policy is sw.policy:
                    sw.rows += len(idx)
                else:
                    self.rows_in_epoch += len(idx)
        if self.buffer is not None:
            for buffer in (self.buffer, self.recent):
                buffer.add_batch(emb, profiles, codes[:, 0], codes[:, 1], rewards,
                                 item_rows=rows, profile_rows=owner)
        if self.samples is not None:
            self._sample(closed, sizes, rows, profiles, owner, codes, rewards, parts)
        learned.rows = n
        learned.X, learned.rewards, learned.item_ids = X, rewards, ids
        learned.partitions = parts
        return learned

    # -- coordinated fine-tunes: samples, epochs, re-bases (docs/scaling.md) ------------------

    def _sample(self, closed: list[Pending], sizes: list[int], rows: np.ndarray,
                profiles: np.ndarray, owner: np.ndarray, codes: np.ndarray,
                rewards: np.ndarray, parts: np.ndarray) -> None:
        """Offer a learnt batch's rows to their partitions' samples (row id: the request id
        and the item's place in the slate)."""
        row_ids = [f"{p.request_id}/{j}" for p, size in zip(closed, sizes, strict=True)
                   for j in range(size)]
        hashes = row_hashes(row_ids)
        ids = self.catalog.ids
        for q in np.unique(parts).tolist():
            sample = self.sample_of(q)
            idx = np.flatnonzero(parts == q)
            top = sample.threshold()
            if top is not None:
                idx = idx[hashes[idx] <= top]
            if not len(idx):
                continue
            sample.offer(SampleRows.of(
                [row_ids[i] for i in idx], [ids[r] for r in rows[idx]],
                profiles[owner[idx]], codes[idx, 0], codes[idx, 1], rewards[idx],
                hashes=hashes[idx]), fresh=True)

    def sample_of(self, partition: int) -> PartitionSample:
        assert self.samples is not None, "samples are kept by coordinated fine-tunes only"
        sample = self.samples.get(partition)
        if sample is None:
            sample = self.samples[partition] = PartitionSample(
                self.sample_capacity, self.catalog.embeddings.shape[1])
        return sample

    def fresh_sample(self, partition: int) -> SampleRows | None:
        """Rows that entered the partition's sample since its last delta (None without
        samples): what its next delta carries."""
        return None if self.samples is None else self.sample_of(partition).take_fresh()

    def offer_sample(self, partition: int, rows: SampleRows) -> None:
        """Merge a folded delta's sample rows into the partition's sample."""
        if self.samples is not None:
            self.sample_of(partition).offer(rows)

    def sample_union(self) -> ReplayRows:
        """Every partition's sample as replay rows, partitions in order: what the trainer
        fine-tunes on."""
        parts = [replay_rows(self.sample_of(p).rows(), self.catalog.embeddings,
                             self.catalog.index) for p in sorted(self.samples or {})]
        if not parts:
            d = self.catalog.embeddings.shape[1]
            return replay_rows(SampleRows.empty(d), self.catalog.embeddings, {})
        out = ReplayRows(*(np.concatenate([getattr(r, f) for r in parts])
                           for f in ReplayRows.__dataclass_fields__))
        return ReplayRows(out.item_emb, out.profiles, out.gender, out.age, out.rewards,
                          np.arange(len(out), dtype=np.int64), out.item_rows)

    def count_rows(self, partition: int, rows: int) -> None:
        """Count ``rows`` folded for ``partition`` in the model of its space."""
        sw = self.switch
        if sw is not None and partition in sw.rebased:
            sw.rows += rows
        else:
            self.rows_in_epoch += rows

    def space_of(self, partition: int) -> tuple[FeatureMap, Policy]:
        """The feature map and model a partition's statistics go to: the new space's once it
        has re-based during a switch, the current one's otherwise."""
        sw = self.switch
        if sw is not None and partition in sw.rebased:
            return sw.fmap, sw.policy
        return self.fmap, self.policy

    def begin_epoch(self, epoch: int, fmap: FeatureMap) -> None:
        """Start switching to ``fmap`` (epoch ``epoch``): its model starts empty, and fills
        as partitions re-base (:meth:`rebase`)."""
        if self.switch is not None or epoch != self.epoch + 1:
            raise ValueError(f"epoch {epoch} cannot start at epoch {self.epoch} "
                             f"(switching: {self.switch is not None})")
        self.switch = Switch(epoch, fmap, new_policy(self.settings, fmap))

    def rebase_statistics(self, partition: int, fmap: FeatureMap) -> tuple[np.ndarray,
                                                                           np.ndarray,
                                                                           list[str]]:
        """``(X, r, item ids)``: the partition's sample rows in ``fmap``'s space
        (``refit_statistics``), in ``(hash, id)`` order."""
        rows = self.sample_of(partition).rows()
        X, r = refit_statistics(replay_rows(rows, self.catalog.embeddings, self.catalog.index),
                                fmap)
        return X, r, list(rows.item_ids)

    def rebase(self, partition: int, epoch: int, at: int) -> str:
        """Re-base ``partition`` into the switching epoch at offset ``at``: its sample's rows
        (as of ``at``: the state must stand there) in the new space, learnt by the new
        model. ``"rebased"``, ``"switched"`` (the last partition: map and policy switched),
        ``"duplicate"`` (already re-based) or ``"skipped"`` (another epoch, or the state of
        the partition is not at ``at``)."""
        sw = self.switch
        if sw is None or sw.epoch != epoch:
            return "skipped"
        if partition in sw.rebased:
            return "duplicate"
        if self._offsets.get(partition, -1) != at:
            return "skipped"
        X, r, items = self.rebase_statistics(partition, sw.fmap)
        if len(X):
            sw.policy.update(X, r, item_ids=items if sw.policy.uses_item_ids else None)
        sw.rebased.add(partition)
        if len(sw.rebased) < self.settings.kafka.events_partitions:
            return "rebased"
        self.fmap, self.policy, self.epoch, self.switch = sw.fmap, sw.policy, sw.epoch, None
        self.rows_in_epoch = sw.rows
        self._adapted = np.zeros((0, sw.fmap.k_item))
        return "switched"

    def fold_marker(self, marker: RebaseMarker) -> str:
        """Fold another worker's re-base marker (the epoch starts here if it had not):
        :meth:`rebase`'s outcomes, ``"old"`` (an epoch already switched to), ``"early"``
        (a later epoch than the switch in progress: its stats partition must wait) or
        ``"refused"`` (a feature space that is not the epoch's, or an epoch gap)."""
        if marker.partition in self.unbased:
            return self._rebuild(marker)
        if marker.epoch <= self.epoch:
            return "old"
        if self.switch is None:
            if marker.epoch != self.epoch + 1:
                return "refused"
            fmap = FeatureMap(_Adapter.from_bytes(marker.adapter), dim=self.fmap.dim)
            if fmap.feature_space != marker.feature_space:
                return "refused"
            self.begin_epoch(marker.epoch, fmap)
        elif marker.epoch > self.switch.epoch:
            return "early"
        elif marker.feature_space != self.switch.fmap.feature_space:
            return "refused"
        return self.rebase(marker.partition, marker.epoch, marker.at)

    def _rebuild(self, marker: RebaseMarker) -> str:
        """A marker of a partition not in the model yet (:attr:`unbased`): the one into
        the space this state started in re-bases it there (and tells the epoch); another
        (an earlier epoch's, or a later one while the state does not know its own epoch
        yet) is ``"early"``: the caller holds it until the read is over."""
        p = marker.partition
        if marker.feature_space != self.fmap.feature_space or self.switch is not None:
            return "early"
        if self._offsets.get(p, -1) != marker.at:
            return "skipped"
        X, r, items = self.rebase_statistics(p, self.fmap)
        if len(X):
            self.policy.update(X, r, item_ids=items if self.policy.uses_item_ids else None)
        self.unbased.discard(p)
        if marker.epoch > self.epoch:  # rows before this epoch's cuts do not count
            self.epoch, self.rows_in_epoch = marker.epoch, 0
        return "rebased"

    def rebase_pending(self) -> int:
        """Partitions still to re-base in the switch in progress (0 when none is)."""
        sw = self.switch
        return 0 if sw is None else self.settings.kafka.events_partitions - len(sw.rebased)

    def swap(self, result: FineTuneResult) -> bool:
        """Adopt a fine-tuned feature map (NeuralLinear): rebuild the bandit in the new space
        from the replay buffer — the rows the run trained on plus those added since — and
        switch map and policy together.

        Kept (returns False) when the run started from another space, when the new space
        does not predict rewards better (log-loss), or when the rebuilt bandit predicts
        the last ``finetune.validation_rows`` rows worse (mean squared error) than the
        current one did: those rows are held out of the rebuild, and the rebuilt bandit
        predicts each before learning it, in the batches the current one learnt them in
        (prequential, like the current one's recorded predictions). The check matters
        most for per-item terms: the buffer is a sample of the history, so a rebuild
        forgets most of what each item's own rows said."""
        if result.previous_feature_space != self.fmap.feature_space:
            return False
        if not result.loss_after < result.loss_before:
            return False
        since = self.buffer.rows_since(result.snapshot_seen)
        X_new, r_new = refit_statistics(since, result.fmap)
        if result.X is not None:
            X, r = np.vstack([result.X, X_new]), np.concatenate([result.r, r_new])
            rows = np.concatenate([result.item_rows, since.item_rows])
            seq = np.concatenate([result.seq, since.seq])
        else:
            X, r, rows, seq = X_new, r_new, since.item_rows, since.seq
        recent = self.recent.snapshot()
        held_out = seq >= (recent.seq.min() if len(recent) else np.iinfo(np.int64).max)
        policy = new_policy(self.settings, result.fmap)
        self._learn_rows(policy, X[~held_out], r[~held_out], rows[~held_out])
        if len(recent):
            # Both bandits predict each recent row before learning it, batch by batch as
            # the current one did: the rebuilt one replays the same batches.
            X_rec, r_rec = refit_statistics(recent, result.fmap)
            slots = recent.seq % len(self._predicted)
            batches = np.flatnonzero(np.diff(self._batch_of[slots])) + 1
            rebuilt = np.empty(len(recent))
            for part in np.split(np.arange(len(recent)), batches):
                ids = self._ids(policy, recent.item_rows[part])
                rebuilt[part] = predicted_reward(policy, X_rec[part], ids)
                self._learn_rows(policy, X_rec[part], r_rec[part], recent.item_rows[part])
            current = self._predicted[slots]
            self.last_swap_check = {"rows": float(len(recent)),
                                    "mse_current": float(np.mean((current - r_rec) ** 2)),
                                    "mse_rebuilt": float(np.mean((rebuilt - r_rec) ** 2))}
            if self.last_swap_check["mse_rebuilt"] > self.last_swap_check["mse_current"] + 1e-12:
                return False
        self.fmap, self.policy = result.fmap, policy
        self._adapted = np.zeros((0, result.fmap.k_item))
        return True

    def _ids(self, policy: Policy, rows: np.ndarray) -> list[str] | None:
        return [self.catalog.ids[i] for i in rows] if policy.uses_item_ids else None

    def _learn_rows(self, policy: Policy, X: np.ndarray, r: np.ndarray,
                    rows: np.ndarray) -> None:
        """Feed buffered rows to a policy; per-item terms need each row's item (rows the
        buffer got without one are left out of such a policy)."""
        if not len(X):
            return
        if policy.uses_item_ids:
            known = rows >= 0
            X, r, rows = X[known], r[known], rows[known]
        policy.update(X, r, item_ids=self._ids(policy, rows))

    # -- checkpoints --------------------------------------------------------------------------

    def to_checkpoint(self, profiles: bool = True) -> Checkpoint:
        """State and offsets; without ``profiles`` (they are restored from the profiles'
        changelog instead: docs/scaling.md) the cost does not grow with the users."""
        key = self.settings.policy.signing_key.encode()
        profiles = self.profiles.state() if profiles else {}
        arrays = {
            "policy": np.frombuffer(dump_snapshot(self.policy, key=key, version=self._version),
                                    dtype=np.uint8),
            "adapter": np.frombuffer(self.fmap.adapter.to_bytes(), dtype=np.uint8),
        }
        header: dict[str, Any] = {"version": self._version, "joiner": self.joiner.state(),
                                  "seen": self.seen.state(), "profiles": {},
                                  "stats_positions": {str(p): o for p, o in
                                                      self.stats_positions.items()}}
        for name, value in profiles.items():
            if isinstance(value, np.ndarray):
                arrays[f"profiles.{name}"] = value
            else:
                header["profiles"][name] = value
        if self.samples is not None:  # a coordinated fine-tune's: samples, epoch, switch
            header["epoch"] = self.epoch
            header["unbased"] = sorted(self.unbased)
            header["rows_in_epoch"] = self.rows_in_epoch
            header["samples"] = {}
            for p, sample in self.samples.items():
                head, parts = sample.state()
                header["samples"][str(p)] = head
                arrays |= {f"sample.{p}.{name}": a for name, a in parts.items()}
            if self.switch is not None:
                sw = self.switch
                header["switch"] = {"epoch": sw.epoch, "rebased": sorted(sw.rebased),
                                    "rows": sw.rows}
                arrays["switch.adapter"] = np.frombuffer(sw.fmap.adapter.to_bytes(),
                                                         dtype=np.uint8)
                arrays["switch.policy"] = np.frombuffer(
                    dump_snapshot(sw.policy, key=key, version=self._version), dtype=np.uint8)
        return Checkpoint(offsets=dict(self._offsets), header=header, arrays=arrays)

    @classmethod
    def from_checkpoint(cls, settings: Settings, catalog: Catalog, ck: Checkpoint,
                        profiles: ProfileStore | None = None) -> LearningState:
        """The state ``ck`` holds; its profiles, or (a checkpoint without them, written
        with the statistics exchange) ``profiles``, an empty store the partitions'
        profiles are restored into."""
        snapshot = ck.arrays["policy"].tobytes()
        # Written with the signing key of its day: any accepted key may open it (rotation).
        key = KeyRing.from_settings(settings.policy).key_for(snapshot) \
            or settings.policy.signing_key.encode()
        fmap = FeatureMap(Adapter.from_bytes(ck.arrays["adapter"].tobytes()),
                          dim=settings.features.dim)
        policy = load_snapshot(snapshot, key=key)
        profile_state = dict(ck.header["profiles"])
        for name, value in ck.arrays.items():
            if name.startswith("profiles."):
                profile_state[name.removeprefix("profiles.")] = value
        if profile_state:
            if profiles is not None:
                profiles.close()  # the checkpoint's profiles are in memory
            profiles = ProfileStore.from_state(profile_state)
        state = cls(settings, catalog, fmap, policy, profiles)
        state.joiner.load_state(ck.header["joiner"])
        state.seen.load_state(ck.header["seen"])
        state._offsets.update(ck.offsets)
        state.stats_positions = {int(p): int(o) for p, o in
                                 ck.header.get("stats_positions", {}).items()}
        state._version = int(ck.header["version"])
        if state.samples is not None and "samples" in ck.header:
            state.epoch = int(ck.header["epoch"])
            state.unbased = set(ck.header.get("unbased", []))
            state.rows_in_epoch = int(ck.header.get("rows_in_epoch", 0))
            for p, head in ck.header["samples"].items():
                prefix = f"sample.{p}."
                state.samples[int(p)] = PartitionSample.from_state(
                    state.sample_capacity, catalog.embeddings.shape[1], head,
                    {n.removeprefix(prefix): a for n, a in ck.arrays.items()
                     if n.startswith(prefix)})
            if "switch" in ck.header:
                sw_fmap = FeatureMap(_Adapter.from_bytes(ck.arrays["switch.adapter"].tobytes()),
                                     dim=settings.features.dim)
                sw_policy = load_snapshot(ck.arrays["switch.policy"].tobytes(), key=key)
                state.switch = Switch(int(ck.header["switch"]["epoch"]), sw_fmap, sw_policy,
                                      set(ck.header["switch"]["rebased"]),
                                      int(ck.header["switch"].get("rows", 0)))
        return state


def new_policy(settings: Settings, fmap: FeatureMap) -> Policy:
    b = settings.bandit
    hyper: dict[str, Any] = {"lam": b.lam, "gamma": b.gamma}
    if b.algorithm in ("linucb", "hybrid_linucb"):
        hyper |= {"alpha": b.alpha, "epsilon": b.epsilon}
    elif b.algorithm in ("ts", "hybrid_ts"):
        hyper |= {"v": b.v}
    else:
        hyper |= {"epsilon": b.epsilon}
    if b.algorithm.startswith("hybrid_"):
        hyper |= {"max_items": b.max_items,
                  "z": context_columns(fmap.dim) if b.item_context == "attributes" else "bias"}
    return policy_from_config(algorithm=b.algorithm, dim=fmap.dim,
                              feature_space=fmap.feature_space, seed=b.seed, **hyper)


@functools.cache
def _labels(gender: int, age: int) -> tuple[str, str]:
    """Fairness group labels of attribute codes (as ``user_groups`` names them)."""
    return (f"gender={GENDERS[gender] if gender >= 0 else UNKNOWN}",
            f"age={AGE_BUCKETS[age] if age >= 0 else UNKNOWN}")
