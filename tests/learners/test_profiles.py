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
