import itertools

import numpy as np

from stream.core.join import Pending, RewardJoiner, SeenIds

WEIGHTS = {"click": 1.0, "purchase": 3.0}


def pending(rid, ts, items=("a", "b", "c"), user="u"):
    return Pending(rid, user, ts, tuple(items), (1.0,) * len(items), {})


def test_reward_is_the_largest_weight_inside_the_window():
    j = RewardJoiner(window_s=100, weights=WEIGHTS)
    j.add_impression(0, pending("r", 0.0))
    j.add_feedback(0, "r", "a", "click", 10.0)
    j.add_feedback(0, "r", "a", "purchase", 20.0)
    j.add_feedback(0, "r", "a", "click", 30.0)       # lower weight: no change
    j.add_feedback(0, "r", "c", "click", 100.0)      # exactly at the window's end: counts
    closed = j.advance(0, 101.0)
    assert [p.rewards for p in closed] == [[3.0, 0.0, 1.0]]
    assert j.orphans == 0


def test_late_unknown_and_foreign_feedback_are_orphans():
    j = RewardJoiner(window_s=50, weights=WEIGHTS)
    j.add_impression(0, pending("r", 0.0))
    j.add_feedback(0, "r", "zz", "click", 1.0)       # item not in the slate
    j.add_feedback(0, "nope", "a", "click", 2.0)     # no such request
    closed = j.add_feedback(0, "r", "a", "click", 51.0)  # closes r first, then arrives late
    assert [p.rewards for p in closed] == [[0.0, 0.0, 0.0]]
    assert j.orphans == 3


def test_watermarks_are_per_partition():
    j = RewardJoiner(window_s=10, weights=WEIGHTS)
    j.add_impression(0, pending("r0", 0.0))
    j.add_impression(1, pending("r1", 0.0))
    assert j.advance(1, 1000.0)[0].request_id == "r1"
    assert len(j) == 1  # partition 0 has not moved
    assert [p.request_id for p in j.flush()] == ["r0"]


def _stream(rng, partition, n):
    t = 0.0
    out = []
    for i in range(n):
        t += rng.exponential(5.0)
        rid = f"p{partition}-{i}"
        out.append(("imp", partition, rid, t))
        for item in "abc":
            if rng.random() < 0.4:
                out.append(("click", partition, rid, item, t + rng.uniform(0, 40)))
    return out


def _run(events, window=30.0):
    j = RewardJoiner(window_s=window, weights=WEIGHTS)
    closed = {0: [], 1: []}
    for ev in events:
        if ev[0] == "imp":
            got = j.add_impression(ev[1], pending(ev[2], ev[3]))
        else:
            got = j.add_feedback(ev[1], ev[2], ev[3], "click", ev[4])
        closed[ev[1]].extend((p.request_id, tuple(p.rewards)) for p in got)
    return closed


def test_closing_order_is_independent_of_how_partitions_interleave():
    rng = np.random.default_rng(7)
    p0 = sorted(_stream(rng, 0, 60), key=lambda e: e[-1])
    p1 = sorted(_stream(rng, 1, 60), key=lambda e: e[-1])
    sequential = _run(p0 + p1)
    shuffled_rng = np.random.default_rng(1)
    merged, i0, i1 = [], iter(p0), iter(p1)
    for take in shuffled_rng.integers(0, 2, size=len(p0) + len(p1)):
        nxt = next(i0 if take == 0 else i1, None) or next(i1 if take == 0 else i0, None)
        if nxt:
            merged.append(nxt)
    merged.extend(itertools.chain(i0, i1))
    assert _run(merged) == sequential


def test_state_round_trip_continues_identically():
    rng = np.random.default_rng(3)
    events = sorted(_stream(rng, 0, 80), key=lambda e: e[-1])
    whole = _run(events)
    j = RewardJoiner(window_s=30.0, weights=WEIGHTS)
    closed = []

    def feed(joiner, evs):
        for ev in evs:
            got = (joiner.add_impression(0, pending(ev[2], ev[3])) if ev[0] == "imp"
                   else joiner.add_feedback(0, ev[2], ev[3], "click", ev[4]))
            closed.extend((p.request_id, tuple(p.rewards)) for p in got)

    feed(j, events[:70])
    restored = RewardJoiner(window_s=30.0, weights=WEIGHTS)
    restored.load_state(j.state())
    feed(restored, events[70:])
    assert closed == whole[0]
    assert restored.orphans == j.orphans or restored.orphans >= j.orphans


def test_seen_ids_forget_oldest_first_and_round_trip():
    s = SeenIds(capacity=3)
    assert [s.check_and_add(x) for x in "abcab"] == [False, False, False, True, True]
    s.check_and_add("d")  # evicts "a"
    t = SeenIds(capacity=3)
    t.load_state(s.state())
    assert t.check_and_add("a") is False
    assert t.check_and_add("d") is True
