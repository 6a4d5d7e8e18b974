"""Statistics deltas: the codec, the accumulator against closed forms, and the fold rule
that lets several learning states end with one state's statistics (no broker: the
partitioned log of fairstream.stats is a list per partition here)."""

from __future__ import annotations

import numpy as np
import pytest
from kafka.partitioner.default import murmur2

from bandits import FeatureSpaceMismatch, HybridStats, SufficientStats
from stream.core.catalog import Catalog
from stream.core.delta import (
    StatsAccumulator,
    StatsDelta,
    cut_delta,
    dump_delta,
    dump_delta_v1,
    fold_delta,
    load_delta,
)
from stream.core.state import LearningState
from stream.events import compact
from stream.exceptions import DeltaError
from stream.kafka.producers import catalog_items, replay_events
from stream.settings import load_settings

PARTITIONS = 4


def test_the_accumulator_equals_the_closed_form_of_all_rows():
    rng = np.random.default_rng(0)
    X, r = rng.normal(size=(300, 6)), rng.random(300)
    ids = [f"i{j}" for j in rng.integers(0, 40, size=300)]
    acc = StatsAccumulator(dim=6, feature_space="fs", z=(4, 5))
    for lo in range(0, 300, 37):  # cut anywhere: the sums do not care
        acc.add(X[lo:lo + 37], r[lo:lo + 37], ids[lo:lo + 37])
    got = acc.take()
    want = HybridStats.from_rows(X, r, ids, z=(4, 5), feature_space="fs")
    assert got.allclose(want, rtol=1e-12)
    np.testing.assert_allclose(got.xtx, X.T @ X, rtol=1e-12)
    assert acc.take().n == 0  # taken: starts over

    shared = StatsAccumulator(dim=6, feature_space="fs")
    shared.add(X, r)
    assert shared.take().allclose(SufficientStats.from_batch(X, r, "fs"))


def test_the_policys_own_batch_sums_add_up_to_the_accumulators():
    """A worker's delta adds what the hybrid policy's update summed for a batch instead
    of summing the rows again: the same statistics, batch after batch; an update the
    item cap made go row by row has no batch sums (the rows are summed then)."""
    from bandits import HybridLinUCB

    rng = np.random.default_rng(1)
    policy = HybridLinUCB(dim=6, alpha=0.3, z=(4, 5), max_items=30, feature_space="fs")
    assert policy.batch_stats() is None
    by_rows = StatsAccumulator(dim=6, feature_space="fs", z=(4, 5))
    shared = StatsAccumulator(dim=6, feature_space="fs", z=(4, 5))
    fell_back = 0
    for size in (1, 7, 40, 3, 60):
        X, r = rng.normal(size=(size, 6)), rng.random(size)
        ids = [f"i{j}" for j in rng.integers(0, 45, size=size)]  # > max_items: the cap bites
        policy.update(X, r, item_ids=ids)
        by_rows.add(X, r, ids)
        batch = policy.batch_stats()
        if batch is None:
            fell_back += 1
            shared.add(X, r, ids)
        else:
            assert batch.n == size and set(batch.item_ids) == set(ids)
            shared.add_stats(batch)
    assert fell_back >= 1  # the row-by-row path was taken
    got, want = shared.take(), by_rows.take()
    assert got.n == want.n
    assert got.allclose(want, rtol=1e-12, atol=1e-12)
    with pytest.raises(FeatureSpaceMismatch):
        StatsAccumulator(dim=6, feature_space="other", z=(4, 5)).add_stats(got)


def test_a_delta_round_trips_and_any_changed_byte_is_refused():
    stats = HybridStats.from_rows(np.eye(3), np.ones(3), ["a", "b", "a"], z=(2,),
                                  feature_space="fs")
    delta = StatsDelta(partition=2, start=7, end=19, stats=stats, source="w",
                       joiner={"watermark": 5.0, "open": []}, users=["u"],
                       means=np.ones((1, 4), np.float32), weights=np.ones(1),
                       last_seen=np.zeros(1), seen=["e1", "e2"])
    data = dump_delta(delta, key=b"k")
    back = load_delta(data, key=b"k")
    assert (back.partition, back.start, back.end, back.source) == (2, 7, 19, "w")
    assert back.stats.allclose(stats) and back.stats.z == (2,)
    assert back.users == ["u"] and back.seen == ["e1", "e2"] and back.joiner["open"] == []
    np.testing.assert_array_equal(back.means, delta.means)

    with pytest.raises(DeltaError) as exc:
        load_delta(data, key=b"other")
    assert exc.value.reason == "signature"
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 1
    with pytest.raises(DeltaError) as exc:
        load_delta(bytes(flipped), key=b"k")
    assert exc.value.reason == "signature"
    # Format 1 deltas, still on the topic after an upgrade, read the same.
    old = load_delta(dump_delta_v1(delta, key=b"k"), key=b"k")
    assert (old.partition, old.start, old.end, old.users, old.seen) == \
        (2, 7, 19, ["u"], ["e1", "e2"])
    assert old.stats.allclose(stats) and old.stats.z == (2,)
    flipped = bytearray(dump_delta_v1(delta, key=b"k"))
    flipped[len(flipped) // 2] ^= 1
    with pytest.raises(DeltaError) as exc:
        load_delta(bytes(flipped), key=b"k")
    assert exc.value.reason == "checksum"


def test_a_deltas_experiment_rows_round_trip_and_a_malformed_one_is_refused():
    stats = SufficientStats.from_batch(np.eye(2), np.ones(2), "fs")
    rows = [["e", "b", "u1", [1.0, 0.0], ["head", "tail"], ["gender=F", "age=25-34"]],
            ["e", "control", "u2", [0.0], ["unknown"], []]]
    delta = StatsDelta(partition=1, start=-1, end=3, stats=stats, experiment=rows)
    assert load_delta(dump_delta(delta, key=b"k"), key=b"k").experiment == rows
    assert load_delta(dump_delta(StatsDelta(partition=1, start=-1, end=3, stats=stats),
                                 key=b"k"), key=b"k").experiment == []
    for bad in (["e", "b", "u1", [1.0, 0.0], ["head"], []],  # a reward without its group
                ["e", "b", 7, [1.0], ["head"], []],
                ["e", "b", "u1", [1.0], ["head"]]):
        signed = dump_delta(StatsDelta(partition=1, start=-1, end=3, stats=stats,
                                       experiment=[bad]), key=b"k")
        with pytest.raises(DeltaError) as exc:
            load_delta(signed, key=b"k")
        assert exc.value.reason == "format"
    with pytest.raises(DeltaError) as exc:
        load_delta(b"not a delta at all" * 10, key=b"k")
    assert exc.value.reason == "format"


@pytest.fixture(scope="module")
def stream_parts(movielens, encoder, data_cache):
    """MovieLens replay events, per events partition as Kafka's keyed partitioner puts
    them, and a catalog."""
    settings = load_settings().replace(data={"cache_dir": data_cache},
                                       events={"attribution_window_s": 600.0},
                                       finetune={"enabled": False})
    catalog = Catalog(encoder.dim)
    catalog.add(catalog_items(movielens), encoder)
    parts: dict[int, list] = {p: [] for p in range(PARTITIONS)}
    for event in replay_events(movielens, limit=4000):
        p = (murmur2(event.user_id.encode()) & 0x7FFFFFFF) % PARTITIONS
        parts[p].append(compact(event))
    parts[1].insert(40, parts[1][10])  # a duplicate: the dedup memory travels too
    return settings, catalog, parts


class Member:
    """One worker's learning, stripped of Kafka: its state, the partitions it owns and,
    per partition, what it learnt since its last delta (as the exchange keeps it)."""

    def __init__(self, settings, catalog, name):
        self.state = LearningState.fresh(settings, catalog)
        self.name, self.owned = name, set()
        self.acc, self.users, self.seen, self.emitted = {}, {}, {}, {}

    def take(self, partitions):
        for p in partitions:
            self.owned.add(p)
            self.emitted[p] = self.state.offsets.get(p, -1)
            self.acc[p] = StatsAccumulator(self.state.policy.dim,
                                           self.state.policy.feature_space,
                                           self.state.policy.z)
            self.users[p], self.seen[p] = {}, []

    def _acc(self, p):
        return self.acc[p]

    def consume(self, p, events, next_offset):
        observed = self.state.observe_records(p, events, next_offset)
        self.seen[p] += [e.event_id for e in events]
        learned = self.state.learn(observed.closed)
        for pending in observed.closed:
            self.users[p][pending.user_id] = None
        if learned.rows:
            self._acc(p).add(learned.X, learned.rewards, learned.item_ids)

    def emit(self, log):
        for p in sorted(self.owned):
            if self.state.offsets.get(p, -1) == self.emitted[p]:
                continue
            delta = cut_delta(self.state, p, self.emitted[p], self.acc[p].take(),
                              list(self.users[p]), self.seen[p], source=self.name)
            self.users[p], self.seen[p] = {}, []
            self.emitted[p] = delta.end
            log[p].append(dump_delta(delta, key=b"k"))  # through the codec, as on Kafka

    def fold(self, log, read):
        """Fold the log from this member's read positions to its end."""
        folded = 0
        for p in range(PARTITIONS):
            for data in log[p][read.get(p, 0):]:
                folded += fold_delta(self.state, load_delta(data, key=b"k"))
            read[p] = len(log[p])
        return folded


def _run(stream_parts, schedule, chunk=60):
    """Feed every partition in chunks, round-robin, to its current owner; ``schedule``
    maps a round number to an action on the members."""
    settings, catalog, parts = stream_parts
    log = {p: [] for p in range(PARTITIONS)}
    members = {"a": Member(settings, catalog, "a"), "b": Member(settings, catalog, "b")}
    reads = {name: {} for name in members}
    members["a"].take([0, 1])
    members["b"].take([2, 3])
    k, moved = 0, True
    while moved or k <= 6:  # until every partition is consumed (and the schedule ran)
        schedule(k, members, log, reads)
        moved = False
        for m in members.values():
            for p in sorted(m.owned):
                at = max(m.state.offsets.get(p, 0), 0)
                events = parts[p][at:at + chunk]
                if events:
                    m.consume(p, events, at + len(events))
                    moved = True
            if k % 3 == 2:
                m.emit(log)
        for name, m in members.items():
            m.fold(log, reads[name])
        k += 1
    for m in members.values():
        m.emit(log)
    for name, m in members.items():
        m.fold(log, reads[name])
    return members


def _reference(stream_parts):
    settings, catalog, parts = stream_parts
    state = LearningState.fresh(settings, catalog)
    for p, events in parts.items():
        for lo in range(0, len(events), 97):
            part = events[lo:lo + 97]
            state.learn(state.observe_records(p, part, lo + len(part)).closed)
    return state


def _same(state, ref):
    assert dict(state.offsets) == dict(ref.offsets)
    a, b = state.policy.total_stats, ref.policy.total_stats
    assert a.n == b.n > 0
    np.testing.assert_allclose(a.xtx, b.xtx, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(a.xty, b.xty, rtol=1e-9, atol=1e-9)
    assert a.allclose(b, rtol=1e-9, atol=1e-9)  # every item's block too
    np.testing.assert_allclose(state.policy.beta, ref.policy.beta, rtol=1e-7, atol=1e-10)
    pa, pb = state.profiles.state(), ref.profiles.state()
    assert sorted(pa["user_ids"]) == sorted(pb["user_ids"])
    order = {u: i for i, u in enumerate(pb["user_ids"])}
    np.testing.assert_allclose(pa["means"], pb["means"][[order[u] for u in pa["user_ids"]]],
                               rtol=1e-6, atol=1e-7)
    assert len(state.joiner) == len(ref.joiner)


@pytest.mark.model
def test_two_members_exchanging_deltas_end_with_one_states_statistics(stream_parts):
    members = _run(stream_parts, lambda *a: None)
    ref = _reference(stream_parts)
    for m in members.values():
        _same(m.state, ref)


@pytest.mark.model
def test_a_member_lost_mid_stream_is_replaced_from_its_last_delta(stream_parts):
    """b dies at round 5 with learning it never sent; a takes its partitions, reads the
    log to its end and resumes each where b's last delta ended."""

    def kill_b(k, members, log, reads):
        if k == 5:
            lost = members.pop("b")
            assert any(lost.state.offsets[p] > lost.emitted[p] for p in lost.owned)
            members["a"].fold(log, reads["a"])
            members["a"].take(sorted(lost.owned))

    (a,) = _run(stream_parts, kill_b).values()
    _same(a.state, _reference(stream_parts))


@pytest.mark.model
def test_folding_twice_or_out_of_order_changes_nothing(stream_parts):
    members = _run(stream_parts, lambda *a: None)
    a = members["a"].state
    before = a.policy.total_stats
    settings, catalog, parts = stream_parts
    log = {p: [] for p in range(PARTITIONS)}
    m = members["b"]
    m.emit(log)  # nothing moved since its last: nothing to send
    assert not any(log.values())
    other = Member(settings, catalog, "c")
    other.take([2])
    other.consume(2, parts[2][:50], 50)
    other.emit(log)
    delta = load_delta(log[2][0], key=b"k")
    assert not fold_delta(a, delta)  # a stands past offset -1 of partition 2
    assert a.policy.total_stats.allclose(before, rtol=0, atol=0)

    foreign = StatsDelta(partition=0, start=a.offsets[0], end=a.offsets[0] + 1,
                         stats=HybridStats.empty(a.policy.dim, a.policy.z, "another-space"))
    with pytest.raises(FeatureSpaceMismatch):
        fold_delta(a, foreign)
    assert a.offsets[0] == foreign.start  # refused: nothing moved
