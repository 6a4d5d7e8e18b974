import numpy as np
import pytest

from learners import ReplayBuffer


def _fill(buf, n, dim=4):
    for t in range(n):
        buf.add(np.full(dim, t, dtype=np.float32), np.zeros(dim), {"gender": "M", "age": 20},
                float(t))


def test_window_keeps_last_rows_in_order():
    buf = ReplayBuffer(capacity=5, emb_dim=4, policy="window")
    _fill(buf, 12)
    rows = buf.snapshot()
    assert len(buf) == 5 and buf.seen == 12
    assert rows.rewards.tolist() == [7, 8, 9, 10, 11]
    assert rows.item_emb[:, 0].tolist() == [7, 8, 9, 10, 11]
    assert rows.gender.tolist() == [0] * 5 and rows.age.tolist() == [1] * 5
    assert buf.rows_since(10).seq.tolist() == [10, 11]


def test_reservoir_bounded_seeded_and_roughly_uniform():
    a, b = ReplayBuffer(100, seed=1, emb_dim=4), ReplayBuffer(100, seed=1, emb_dim=4)
    _fill(a, 5000)
    _fill(b, 5000)
    assert len(a) == 100 and a.seen == 5000
    np.testing.assert_array_equal(a.snapshot().seq, b.snapshot().seq)
    seq = a.snapshot().seq
    assert 1500 < seq.mean() < 3500  # uniform over the stream, not the tail
    c = ReplayBuffer(100, seed=2, emb_dim=4)
    _fill(c, 5000)
    assert not np.array_equal(c.snapshot().seq, seq)


def test_grows_past_initial_allocation_and_validates():
    buf = ReplayBuffer(capacity=3000, emb_dim=4)
    _fill(buf, 2500)
    assert len(buf) == 2500 and buf.snapshot().rewards[-1] == 2499
    with pytest.raises(ValueError):
        buf.add(np.zeros(4), np.zeros(4), {}, float("inf"))
    with pytest.raises(ValueError):
        ReplayBuffer(10, policy="fifo")


@pytest.mark.parametrize("policy", ["window", "reservoir"])
def test_batches_by_row_index_equal_batches_of_gathered_rows(policy):
    rng = np.random.default_rng(3)
    catalog = rng.normal(size=(50, 4)).astype(np.float32)
    profiles = rng.normal(size=(20, 4)).astype(np.float32)
    by_index, gathered = (ReplayBuffer(64, seed=5, emb_dim=4, policy=policy) for _ in range(2))
    for m in (40, 30, 90, 7):  # fills, then replaces
        rows, owner = rng.integers(0, 50, m), rng.integers(0, 20, m)
        codes, rewards = rng.integers(-1, 2, m), rng.random(m)
        by_index.add_batch(catalog, profiles, codes, codes, rewards, item_rows=rows,
                           profile_rows=owner)
        gathered.add_batch(catalog[rows], profiles[owner], codes, codes, rewards)
    a, b = by_index.snapshot(), gathered.snapshot()
    for field in ("item_emb", "profiles", "gender", "rewards", "seq"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    with pytest.raises(ValueError, match="item_rows has 2 entries for 3 rewards"):
        by_index.add_batch(catalog, profiles, np.zeros(3), np.zeros(3), np.ones(3),
                           item_rows=np.arange(2))
