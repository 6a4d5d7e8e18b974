import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from learners import ProfileStore


def _closed_form(embs, rewards, decay):
    pos = [(e, r) for e, r in zip(embs, rewards, strict=True) if r > 0]
    n = len(pos)
    w = np.array([decay ** (n - 1 - i) * r for i, (_, r) in enumerate(pos)])
    return (w[:, None] * np.array([e for e, _ in pos])).sum(0) / w.sum()


@settings(max_examples=30, deadline=None)
@given(
    decay=st.floats(0.05, 1.0),
    rewards=st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, -1.0]), min_size=1, max_size=30),
    seed=st.integers(0, 2**16),
)
def test_decayed_mean_matches_closed_form(decay, rewards, seed):
    rng = np.random.default_rng(seed)
    embs = rng.normal(size=(len(rewards), 8))
    store = ProfileStore(emb_dim=8, decay=decay, capacity=10)
    for e, r in zip(embs, rewards, strict=True):
        store.observe("u", e, r, now=0.0)
    if not any(r > 0 for r in rewards):
        assert "u" not in store
        np.testing.assert_array_equal(store.get("u"), np.zeros(8))
    else:
        np.testing.assert_allclose(store.get("u"), _closed_form(embs, rewards, decay),
                                   rtol=1e-5, atol=1e-5)


def test_only_positive_rewards_move_profile_and_unknown_is_zero():
    store = ProfileStore(emb_dim=4, decay=0.9)
    store.observe(1, np.ones(4), 1.0, now=0)
    store.observe(1, np.full(4, 9.0), 0.0, now=1)
    store.observe(1, np.full(4, 9.0), float("nan"), now=2)
    np.testing.assert_array_equal(store.get(1), np.ones(4))
    assert store.get(2).shape == (4,) and not store.get(2).any()
    with pytest.raises(ValueError):
        store.observe(1, np.ones(3), 1.0)


def test_lru_cap_enforced():
    store = ProfileStore(emb_dim=2, capacity=3)
    for u in range(3):
        store.observe(u, np.ones(2), 1.0, now=u)
    store.observe(0, np.ones(2), 1.0, now=10)  # 0 becomes most recent
    store.observe(99, np.ones(2), 1.0, now=11)  # evicts 1, the least recent
    assert len(store) == 3 and 1 not in store and {0, 2, 99} <= set(store.state()["user_ids"])
    assert store.evictions == 1


def test_ttl_forgets_idle_users():
    store = ProfileStore(emb_dim=2, ttl_seconds=10.0)
    store.observe("a", np.ones(2), 1.0, now=0.0)
    store.observe("b", np.ones(2), 1.0, now=5.0)
    assert store.get("a", now=9.0).any()
    assert store.expire(now=12.0) == 1 and "a" not in store and "b" in store
    assert not store.get("b", now=100.0).any() and len(store) == 0


def test_state_round_trip_exact():
    rng = np.random.default_rng(0)
    store = ProfileStore(emb_dim=16, decay=0.8, capacity=50, ttl_seconds=1e6)
    for t in range(300):
        store.observe(int(rng.integers(80)), rng.normal(size=16), float(rng.integers(0, 2)), now=t)
    state = store.state()
    json.dumps({k: v for k, v in state.items() if not isinstance(v, np.ndarray)})
    assert all(isinstance(v, np.ndarray) and v.dtype != object
               for k, v in state.items() if k in ("means", "weights", "last_seen"))
    back = ProfileStore.from_state(state)
    again = back.state()
    assert again["user_ids"] == state["user_ids"] and again["config"] == state["config"]
    for k in ("means", "weights", "last_seen"):
        np.testing.assert_array_equal(again[k], state[k])
    assert back.evictions == store.evictions
    # and they evolve identically afterwards
    e = rng.normal(size=16)
    uid = state["user_ids"][0]
    store.observe(uid, e, 1.0, now=400)
    back.observe(uid, e, 1.0, now=400)
    np.testing.assert_array_equal(store.get(uid, now=400), back.get(uid, now=400))


@settings(max_examples=40, deadline=None)
@given(
    impressions=st.lists(
        st.tuples(st.integers(0, 5),                        # user
                  st.floats(0.0, 5.0),                      # time step
                  st.lists(st.tuples(st.integers(0, 9),     # shown row
                                     st.sampled_from([0.0, 0.0, 1.0, 2.0])),
                           min_size=1, max_size=3)),
        max_size=40),
    capacity=st.integers(1, 8),
    ttl=st.sampled_from([None, 3.0]),
    seed=st.integers(0, 2**16),
)
def test_walk_is_get_then_observe_in_order(impressions, capacity, ttl, seed):
    """The batch walk hands out what get() would before each impression's feedback and
    leaves the store as observe() of each positive reward would, LRU evictions and TTL
    expiries included."""
    emb = np.random.default_rng(seed).normal(size=(10, 8)).astype(np.float32)
    one, batch = (ProfileStore(emb_dim=8, decay=0.7, capacity=capacity, ttl_seconds=ttl)
                  for _ in range(2))
    now, users, times, rows, rewards, expected = 0.0, [], [], [], [], []
    for user, step, shown in impressions:
        now += step
        users.append(f"u{user}")
        times.append(now)
        rows.append([r for r, _ in shown])
        rewards.append([g for _, g in shown])
        expected.append(one.get(f"u{user}", now=now).copy())
        for r, g in shown:
            if g > 0:
                one.observe(f"u{user}", emb[r], g, now=now)
    got = batch.walk(users, times, rows, rewards, emb)
    assert got.shape == (len(impressions), 8) and got.dtype == np.float32
    if impressions:
        np.testing.assert_array_equal(got, np.array(expected))
    a, b = one.state(), batch.state()
    assert a["user_ids"] == b["user_ids"] and a["counters"] == b["counters"]
    for key in ("means", "weights", "last_seen"):
        np.testing.assert_array_equal(a[key], b[key])


def test_walk_rejects_embeddings_of_another_width_or_type():
    store = ProfileStore(emb_dim=4)
    with pytest.raises(ValueError, match="float32 rows of 4"):
        store.walk(["u"], [0.0], [[0]], [[1.0]], np.ones((3, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="float32 rows of 4"):
        store.walk(["u"], [0.0], [[0]], [[1.0]], np.ones((3, 4)))


@settings(max_examples=30, deadline=None)
@given(
    before=st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0]), max_size=6),
    after=st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, -1.0]), min_size=1, max_size=6),
    seed=st.integers(0, 2**16),
)
def test_folded_is_observe_without_changing_the_store(before, after, seed):
    """What serving profiles are made of: ``folded`` gives, bit for bit, what the worker's
    walk would (observing the rewarded items; others do not move a profile there), and
    leaves the store as it was."""
    rng = np.random.default_rng(seed)
    embs = rng.normal(size=(len(before) + len(after), 8)).astype(np.float32)
    store, twin = (ProfileStore(emb_dim=8, decay=0.7, capacity=10) for _ in range(2))
    for i, r in enumerate(before):
        store.observe("u", embs[i], r, now=float(i))
        twin.observe("u", embs[i], r, now=float(i))
    held = store.get("u").copy()
    got = store.folded("u", [(embs[len(before) + i], r, 100.0 + i)
                             for i, r in enumerate(after)])
    for i, r in enumerate(after):
        if r > 0:
            twin.observe("u", embs[len(before) + i], r, now=100.0 + i)
    np.testing.assert_array_equal(store.get("u"), held)
    if "u" not in twin:
        assert got is None
    else:
        mean, weight, last = got
        _, means, weights, lasts = twin.entries(["u"])
        np.testing.assert_array_equal(mean, means[0])
        assert weight == weights[0] and last == lasts[0]


def test_put_rows_keeps_each_mean_and_the_cap():
    """Serving profiles arrive one by one: each is kept as its own array (no batch array
    pinned by a survivor), most recent last, least recent evicted beyond the cap."""
    store = ProfileStore(emb_dim=3, capacity=2)
    rows = [np.full(3, i, dtype=np.float32) for i in range(3)]
    store.put_rows(["a", "b"], rows[:2], [1.0, 2.0], [10.0, 11.0])
    store.put_rows(["a", "c"], [rows[2], rows[2]], [3.0, 4.0], [12.0, 13.0])
    assert store.users() == ["a", "c"] and store.evictions == 1  # b was least recent
    assert store.get("a").tolist() == [2.0, 2.0, 2.0]
    _, _, weights, last = store.entries(["a", "c"])
    assert weights.tolist() == [3.0, 4.0] and last.tolist() == [12.0, 13.0]
    with pytest.raises(ValueError, match="want"):
        store.put_rows(["d"], [np.zeros(4, np.float32)], [1.0], [0.0])
