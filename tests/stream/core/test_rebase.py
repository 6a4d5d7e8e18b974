"""One coordinated fine-tune across workers, stripped of Kafka (the partitioned log of
fairstream.stats is a list per partition here, as in test_delta.py): per-partition
bottom-k samples travel in deltas and end identical on every member and equal to one
state's; re-base markers are idempotent; a re-base is the closed form of the partition's
sample in the new space; two members that switch end with the same model, that of one
state doing the same switch."""

from __future__ import annotations

import numpy as np
import pytest
from kafka.partitioner.default import murmur2

from bandits import FeatureSpaceMismatch, HybridStats
from learners import FineTuner, PartitionSample, SampleRows, refit_statistics, replay_rows
from stream.core.catalog import Catalog
from stream.core.checkpoint import read_checkpoint, write_checkpoint
from stream.core.delta import (
    RebaseMarker,
    StatsAccumulator,
    StatsDelta,
    cut_delta,
    dump_delta,
    dump_marker,
    fold_delta,
    load_delta,
    load_marker,
)
from stream.core.state import LearningState
from stream.events import compact
from stream.exceptions import DeltaError
from stream.kafka.producers import catalog_items, replay_events
from stream.settings import load_settings
from tests.stream.core.test_delta import Member as DeltaMember

PARTITIONS = 4
KEY = b"k"


def test_a_bottom_k_sample_is_a_function_of_the_rows_not_of_their_order_or_batches():
    rng = np.random.default_rng(0)
    n = 500
    rows = SampleRows.of([f"r{i}/0" for i in range(n)], [f"i{i % 7}" for i in range(n)],
                         rng.normal(size=(n, 3)), rng.integers(-1, 2, n), rng.integers(-1, 5, n),
                         rng.random(n))
    want = np.sort(rows.hashes)[:40]
    samples = []
    for seed in range(3):  # three arrival orders, three batchings
        order = np.random.default_rng(seed).permutation(n)
        s = PartitionSample(capacity=40, emb_dim=3)
        cuts = np.sort(np.random.default_rng(seed + 10).choice(n, 12, replace=False))
        for part in np.split(order, cuts):
            s.offer(rows.take(part), fresh=True)
        samples.append(s.rows())
    for got in samples:
        np.testing.assert_array_equal(got.hashes, want)  # the 40 smallest hashes, in order
        np.testing.assert_array_equal(got.profiles, samples[0].profiles)
        assert got.row_ids == samples[0].row_ids and got.item_ids == samples[0].item_ids
    # An id already held adds nothing (a replayed impression), whatever it carries.
    s = PartitionSample(capacity=40, emb_dim=3)
    s.offer(rows, fresh=False)
    again = rows.take(np.argsort(rows.hashes)[:5])
    s.offer(SampleRows.of(again.row_ids, again.item_ids, again.profiles + 1, again.gender,
                          again.age, again.rewards + 1))
    np.testing.assert_array_equal(s.rows().rewards, samples[0].rewards)
    with pytest.raises(ValueError, match="capacity"):
        PartitionSample(capacity=0, emb_dim=3)


def test_fresh_rows_are_all_a_reader_needs_to_end_with_the_senders_sample():
    """bottom_k(S ∪ R) = bottom_k(S ∪ (R ∩ bottom_k(S ∪ R))): a delta carries only the
    rows of its range that are in the sample after it."""
    rng = np.random.default_rng(1)
    sender, reader = PartitionSample(25, 2), PartitionSample(25, 2)
    for lo in range(0, 400, 60):
        ids = [f"q{i}/{j}" for i in range(lo, lo + 60) for j in range(2)]
        batch = SampleRows.of(ids, ["x"] * len(ids), rng.normal(size=(len(ids), 2)),
                              np.zeros(len(ids)), np.zeros(len(ids)), rng.random(len(ids)))
        sender.offer(batch, fresh=True)
        fresh = sender.take_fresh()
        assert len(fresh) <= 25 and not len(sender.take_fresh())  # taken: none left
        # through the delta codec, as on the topic
        delta = StatsDelta(partition=0, start=lo - 1, end=lo + 59,
                           stats=HybridStats.empty(2, "bias", "fs"), sample=fresh)
        reader.offer(load_delta(dump_delta(delta, key=KEY), key=KEY).sample)
        a, b = sender.rows(), reader.rows()
        assert a.row_ids == b.row_ids
        np.testing.assert_array_equal(a.profiles, b.profiles)
        np.testing.assert_array_equal(a.rewards, b.rewards)
        assert a.profiles.dtype == np.float32 and a.hashes.dtype == np.uint64


def test_a_marker_round_trips_signed():
    m = RebaseMarker(partition=3, epoch=2, at=41, feature_space="fs-abc", adapter=b"\x00w" * 50,
                     source="w1")
    data = dump_marker(m, key=KEY)
    assert load_marker(data, key=KEY) == m
    with pytest.raises(DeltaError) as exc:
        load_marker(data, key=b"other")
    assert exc.value.reason == "signature"
    with pytest.raises(DeltaError) as exc:
        load_marker(dump_delta(StatsDelta(0, -1, 1, HybridStats.empty(2, "bias", "f")), KEY),
                    key=KEY)
    assert exc.value.reason == "format"


@pytest.fixture(scope="module")
def stream_parts(movielens, encoder, data_cache):
    settings = load_settings().replace(
        data={"cache_dir": data_cache}, events={"attribution_window_s": 600.0},
        kafka={"events_partitions": PARTITIONS}, stats={"exchange": True},
        finetune={"enabled": True, "buffer_capacity": 800})  # 200 rows per partition
    catalog = Catalog(encoder.dim)
    catalog.add(catalog_items(movielens), encoder)
    parts: dict[int, list] = {p: [] for p in range(PARTITIONS)}
    for event in replay_events(movielens, limit=4000):
        p = (murmur2(event.user_id.encode()) & 0x7FFFFFFF) % PARTITIONS
        parts[p].append(compact(event))
    return settings, catalog, parts


class Member(DeltaMember):
    """One worker stripped of Kafka (test_delta.py's, with samples and markers)."""

    def __init__(self, settings, catalog, name, owned):
        self.state = LearningState.fresh(settings, catalog)
        assert self.state.coordinated and self.state.buffer is None
        self.name, self.owned = name, set(owned)
        self.acc, self.users, self.seen = {}, {p: {} for p in owned}, {p: [] for p in owned}
        self.emitted = dict.fromkeys(owned, -1)

    def _acc(self, p):
        if p not in self.acc:
            policy = self.state.space_of(p)[1]
            self.acc[p] = StatsAccumulator(policy.dim, policy.feature_space, policy.z)
        return self.acc[p]

    def emit(self, log, p=None):
        for q in sorted(self.owned) if p is None else [p]:
            if self.state.offsets.get(q, -1) == self.emitted[q]:
                continue
            delta = cut_delta(self.state, q, self.emitted[q], self._acc(q).take(),
                              list(self.users[q]), self.seen[q], source=self.name)
            del self.acc[q]
            self.users[q], self.seen[q] = {}, []
            self.emitted[q] = delta.end
            log[q].append(("delta", dump_delta(delta, key=KEY)))

    def cut(self, log):
        """The exchange's rebase_owned: last old delta, marker, re-base here."""
        sw = self.state.switch
        for p in sorted(self.owned):
            if p in sw.rebased:
                continue
            self.emit(log, p)
            at = self.state.offsets.get(p, -1)
            m = RebaseMarker(p, sw.epoch, at, sw.fmap.feature_space, sw.fmap.adapter.to_bytes())
            log[p].append(("marker", dump_marker(m, key=KEY)))
            assert self.state.rebase(p, sw.epoch, at) in ("rebased", "switched")

    def fold(self, log, read):
        outcomes = []
        for p in range(PARTITIONS):
            if p in self.owned:
                read[p] = len(log[p])
                continue
            for kind, data in log[p][read.get(p, 0):]:
                if kind == "delta":
                    fold_delta(self.state, load_delta(data, key=KEY))
                else:
                    outcomes.append(self.state.fold_marker(load_marker(data, key=KEY)))
            read[p] = len(log[p])
        return outcomes


def _feed(members, parts, lo, hi, log, reads):
    for m in members:
        for p in sorted(m.owned):
            for a in range(lo, min(hi, len(parts[p])), 70):
                b = min(a + 70, hi, len(parts[p]))
                m.consume(p, parts[p][a:b], b)
        m.emit(log)
    for _ in range(2):  # twice: what one member's markers start, the other reads back
        for m, read in zip(members, reads, strict=True):
            m.fold(log, read)
            if m.state.switch is not None:
                m.cut(log)


def _same_stats(a, b):
    assert a.n == b.n > 0 and a.feature_space == b.feature_space
    np.testing.assert_allclose(a.xtx, b.xtx, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(a.xty, b.xty, rtol=1e-9, atol=1e-9)
    assert a.allclose(b, rtol=1e-9, atol=1e-9)


def test_two_members_switch_together_and_end_with_one_states_model(stream_parts):
    settings, catalog, parts = stream_parts
    a = Member(settings, catalog, "a", [0, 1])
    b = Member(settings, catalog, "b", [2, 3])
    log = {p: [] for p in range(PARTITIONS)}
    reads = [{}, {}]
    _feed([a, b], parts, 0, 500, log, reads)

    # Every member holds every partition's sample, identical, and equal to what one
    # state learning everything holds.
    one = LearningState.fresh(settings, catalog)
    for p in range(PARTITIONS):
        for lo in range(0, 500, 97):
            part = parts[p][lo:min(lo + 97, 500)]
            one.learn(one.observe_records(p, part, lo + len(part)).closed)
    for p in range(PARTITIONS):
        want = one.samples[p].rows()
        assert len(want) == 200
        for m in (a, b):
            got = m.state.samples[p].rows()
            assert got.row_ids == want.row_ids
            np.testing.assert_array_equal(got.profiles, want.profiles)
            np.testing.assert_array_equal(got.rewards, want.rewards)

    # The trainer (a) fine-tunes on the union of the samples (the real fine-tune).
    tuner = FineTuner(steps=20, batch_size=64, device="cpu", min_rows=1, compute_refit=False,
                      eval_rows=400)

    class Union:  # the worker's _SampleView
        seen = 0
        snapshot = staticmethod(a.state.sample_union)

    result = tuner.run(Union(), a.state.fmap)
    assert result.rows == 4 * 200
    new = result.fmap
    old_space = a.state.fmap.feature_space
    assert new.feature_space != old_space

    a.state.begin_epoch(1, new)
    one.begin_epoch(1, new)
    a.cut(log)  # a's partitions re-base at once; b still learns its own in the old space
    assert a.state.rebase_pending() == 2 and a.state.fmap.feature_space == old_space
    # b learns [500, 700) of its partitions in the old space, then reads a's markers and
    # cuts its own at 700; a reads them: both switch.
    _feed([a, b], parts, 500, 700, log, reads)
    for m in (a, b):
        assert m.state.switch is None and m.state.epoch == 1
    _feed([a, b], parts, 700, 900, log, reads)
    for m in (a, b):
        assert m.state.fmap.feature_space == m.state.policy.feature_space == new.feature_space

    # Markers are idempotent: folding them all again changes nothing.
    before = a.state.policy.total_stats
    again = []
    for p in range(PARTITIONS):
        again += [a.state.fold_marker(load_marker(d, key=KEY)) for k, d in log[p]
                  if k == "marker"]
    assert again == ["old"] * PARTITIONS
    _same_stats(a.state.policy.total_stats, before)
    # An old-space delta cannot join the new model.
    old_delta = StatsDelta(partition=0, start=a.state.offsets[0], end=a.state.offsets[0] + 1,
                           stats=HybridStats.empty(settings.features.dim, "bias", old_space))
    with pytest.raises(FeatureSpaceMismatch):
        fold_delta(a.state, old_delta)

    # One state doing the same switch at the same offsets: partitions 0, 1 re-based at
    # a's cut (offset 500), 2, 3 at b's (offset 700).
    ref = one  # it learnt [0, 500) of every partition already
    for p in (0, 1):
        assert ref.rebase(p, 1, 500) == "rebased"
    for p in (2, 3):
        for lo in range(500, 700, 97):
            part = parts[p][lo:min(lo + 97, 700)]
            ref.learn(ref.observe_records(p, part, lo + len(part)).closed)
    for p in (0, 1):  # learnt in the new space, as a did after its cut
        for lo in range(500, 700, 97):
            part = parts[p][lo:min(lo + 97, 700)]
            ref.learn(ref.observe_records(p, part, lo + len(part)).closed)
    assert ref.rebase(2, 1, 700) == "rebased" and ref.rebase(3, 1, 700) == "switched"
    for p in range(PARTITIONS):
        for lo in range(700, 900, 97):
            part = parts[p][lo:min(lo + 97, 900)]
            ref.learn(ref.observe_records(p, part, lo + len(part)).closed)
    for m in (a, b):
        _same_stats(m.state.policy.total_stats, ref.policy.total_stats)
    # The fine-tune trigger's count, the group's rows since the epoch began: the same
    # everywhere (a new trainer counts on), and only rows learnt in the new space.
    assert a.state.rows_in_epoch == b.state.rows_in_epoch == ref.rows_in_epoch > 0
    assert ref.rows_in_epoch < ref.policy.total_stats.n  # the re-based samples are not


def test_a_rebase_is_the_closed_form_of_the_partitions_sample(stream_parts, tmp_path):
    settings, catalog, parts = stream_parts
    state = LearningState.fresh(settings, catalog)
    for p in range(PARTITIONS):
        state.learn(state.observe_records(p, parts[p][:300], 300).closed)
    # another space: the PCA of a part of the catalog
    from learners import Adapter, FeatureMap

    fmap = FeatureMap(Adapter.from_pca(catalog.embeddings[::3], out_dim=FeatureMap.adapter_dim(
        settings.features.dim), seed=1), dim=settings.features.dim)
    assert fmap.feature_space != state.fmap.feature_space
    state.begin_epoch(1, fmap)
    assert state.rebase(0, 1, 299) == "skipped"  # the state is not at 299
    assert state.rebase(0, 1, 300) == "rebased"
    assert state.rebase(0, 1, 300) == "duplicate"
    assert state.rebase(1, 2, 300) == "skipped"  # not the epoch in progress
    rows = replay_rows(state.samples[0].rows(), catalog.embeddings, catalog.index)
    X, r = refit_statistics(rows, fmap)
    got = state.switch.policy.total_stats
    np.testing.assert_allclose(got.xtx, X.T @ X, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.xty, X.T @ r, rtol=1e-12, atol=1e-12)
    assert 0 < got.n == len(X) == len(state.samples[0]) <= 200
    # A marker re-bases the same way, once: a second copy is a duplicate.
    m = RebaseMarker(1, 1, 300, fmap.feature_space, fmap.adapter.to_bytes())
    assert [state.fold_marker(m), state.fold_marker(m)] == ["rebased", "duplicate"]
    other = FeatureMap(Adapter.from_pca(catalog.embeddings[::5], out_dim=fmap.k_item, seed=2),
                       dim=settings.features.dim)
    assert state.fold_marker(RebaseMarker(2, 1, 300, other.feature_space,
                                          other.adapter.to_bytes())) == "refused"
    assert state.fold_marker(RebaseMarker(2, 2, 300, other.feature_space,
                                          other.adapter.to_bytes())) == "early"
    assert state.switch.rebased == {0, 1}

    # A checkpoint mid-switch carries the samples, the epoch and the new-space model.
    path = tmp_path / "ck.npz"
    write_checkpoint(path, state.to_checkpoint())
    back = LearningState.from_checkpoint(settings, catalog, read_checkpoint(path))
    assert back.switch.epoch == 1 and back.switch.rebased == {0, 1}
    assert back.rows_in_epoch == state.rows_in_epoch > 0
    assert back.switch.fmap.feature_space == fmap.feature_space
    _same_stats(back.switch.policy.total_stats, state.switch.policy.total_stats)
    for p in range(PARTITIONS):
        assert back.samples[p].rows().row_ids == state.samples[p].rows().row_ids
    for p in (2,):
        assert back.rebase(p, 1, 300) == "rebased"
    assert back.rebase(3, 1, 300) == "switched"
    assert back.fmap.feature_space == back.policy.feature_space == fmap.feature_space
    assert back.epoch == 1 and back.switch is None
