"""The disk profile store against the memory store as oracle, and against closed forms."""

import numpy as np
import pytest

from learners import DiskProfileStore, ProfileStore

BACKENDS = ["rocksdb", "sqlite"]


def _same(store, oracle, users, now=None):
    for u in users:
        np.testing.assert_array_equal(store.get(u, now=now), oracle.get(u, now=now), err_msg=u)
    assert len(store) == len(oracle)
    assert sorted(store.users()) == sorted(oracle.users())
    held, means, weights, seen = store.entries(sorted(oracle.users()))
    o_held, o_means, o_weights, o_seen = oracle.entries(sorted(oracle.users()))
    assert held == o_held
    np.testing.assert_array_equal(means, o_means)
    np.testing.assert_array_equal(weights, o_weights)
    np.testing.assert_array_equal(seen, o_seen)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_the_memory_store_with_far_more_users_than_memory(tmp_path, backend, seed):
    """observe / walk / put / forget / get in random order, 60 users, 7 in memory: every
    profile, weight and last-seen time equals the memory store's bit for bit."""
    rng = np.random.default_rng(seed)
    dim, n_users = 8, 60
    users = [f"u{i}" for i in range(n_users)]
    emb = rng.normal(size=(40, dim)).astype(np.float32)
    store = DiskProfileStore(tmp_path / "p", emb_dim=dim, decay=0.8, capacity=7,
                             backend=backend)
    oracle = ProfileStore(emb_dim=dim, decay=0.8, capacity=10_000)
    now = 0.0
    for step in range(600):
        now += 1.0
        op = rng.integers(10)
        if op < 5:
            u, row, r = users[rng.integers(n_users)], rng.integers(40), float(rng.choice(
                [0.0, 0.5, 1.0, 2.0, -1.0]))
            store.observe(u, emb[row], r, now=now)
            oracle.observe(u, emb[row], r, now=now)
        elif op < 7:
            batch = [users[i] for i in rng.integers(n_users, size=5)]
            rows = [rng.integers(40, size=2).tolist() for _ in batch]
            rewards = [rng.choice([0.0, 1.0], size=2).tolist() for _ in batch]
            times = [now] * len(batch)
            np.testing.assert_array_equal(store.walk(batch, times, rows, rewards, emb),
                                          oracle.walk(batch, times, rows, rewards, emb))
        elif op < 8:
            some = [users[i] for i in rng.integers(n_users, size=12)]  # repeats: last wins
            means = rng.normal(size=(12, dim)).astype(np.float32)
            w, t = rng.uniform(0.1, 3, 12), np.full(12, now)
            store.put(some, means, w, t)
            oracle.put(some, means, w, t)
        elif op < 9:
            gone = [users[i] for i in rng.integers(n_users, size=3)]
            assert store.forget(gone) == oracle.forget(gone)
        else:
            u = users[rng.integers(n_users)]
            np.testing.assert_array_equal(store.get(u), oracle.get(u))
        assert store.in_memory <= 7
        if step % 100 == 99:
            store.flush()
    assert store.spills > 0 and store.loads > 0 and oracle.evictions == 0
    _same(store, oracle, users)
    store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_spilled_profile_is_the_closed_form(tmp_path, backend):
    """One user in memory at a time: every fold reads the profile back from disk."""
    rng = np.random.default_rng(5)
    dim, decay = 16, 0.7
    store = DiskProfileStore(tmp_path / "p", emb_dim=dim, decay=decay, capacity=1,
                             backend=backend)
    embs = {u: [] for u in "abc"}
    for t in range(30):
        u = "abc"[t % 3]
        e = rng.normal(size=dim)
        embs[u].append(e)
        store.observe(u, e, 1.0, now=float(t))
    assert store.in_memory == 1 and len(store) == 3
    for u, es in embs.items():
        n = len(es)
        w = decay ** np.arange(n - 1, -1, -1)
        expect = (w[:, None] * np.array(es)).sum(0) / w.sum()
        np.testing.assert_allclose(store.get(u), expect, rtol=1e-5, atol=1e-6)
    store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_reopened_files_hold_every_profile_and_fresh_empties_them(tmp_path, backend):
    rng = np.random.default_rng(1)
    dim = 8
    oracle = ProfileStore(emb_dim=dim, capacity=1000)
    store = DiskProfileStore(tmp_path / "p", emb_dim=dim, capacity=10, backend=backend)
    for t in range(300):
        u, e = f"u{rng.integers(100)}", rng.normal(size=dim)
        store.observe(u, e, 1.0, now=float(t))
        oracle.observe(u, e, 1.0, now=float(t))
    store.close()
    again = DiskProfileStore(tmp_path / "p", emb_dim=dim, capacity=10, backend=backend)
    assert again.in_memory == 0
    _same(again, oracle, oracle.users())
    again.close()
    empty = DiskProfileStore(tmp_path / "p", emb_dim=dim, capacity=10, backend=backend,
                             fresh=True)
    assert len(empty) == 0 and not empty.get(oracle.users()[0]).any()
    empty.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_flush_writes_what_changed_not_every_user(tmp_path, backend):
    store = DiskProfileStore(tmp_path / "p", emb_dim=4, decay=1.0, capacity=5000,
                             backend=backend)
    ids = [f"u{i}" for i in range(3000)]
    store.put(ids, np.ones((3000, 4), np.float32), np.ones(3000), np.zeros(3000))
    assert store.flush() == 3000
    assert store.flush() == 0
    for u in ("u7", "u8", "u2999"):
        store.observe(u, np.full(4, 2.0), 1.0, now=1.0)
    store.observe("u9", np.zeros(4), 0.0, now=2.0)  # activity moves its last-seen time
    assert store.flush() == 4
    store.close()
    again = DiskProfileStore(tmp_path / "p", emb_dim=4, decay=1.0, capacity=5000,
                             backend=backend)
    held, means, _, seen = again.entries(["u7", "u9", "u10"])
    assert held == ["u7", "u9", "u10"]
    np.testing.assert_array_equal(means[0], np.full(4, 1.5, np.float32))
    assert seen.tolist() == [1.0, 2.0, 0.0]
    again.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_bulk_put_beyond_memory_goes_to_disk_most_recent_kept(tmp_path, backend):
    """A restore's puts, in chunks, of 10x the memory: all held, the last ones in memory."""
    rng = np.random.default_rng(2)
    n, dim = 2000, 8
    ids = [f"u{i}" for i in range(n)]
    means = rng.normal(size=(n, dim)).astype(np.float32)
    w, t = rng.uniform(0.5, 2, n), rng.uniform(0, 100, n)
    store = DiskProfileStore(tmp_path / "p", emb_dim=dim, capacity=200, backend=backend)
    oracle = ProfileStore(emb_dim=dim, capacity=n)
    store.put(ids[:1500], means[:1500], w[:1500], t[:1500])  # larger than memory at once
    for lo in range(1000, n, 256):  # overlapping chunks: the later put wins
        store.put(ids[lo:lo + 256], means[lo:lo + 256] + 1, w[lo:lo + 256], t[lo:lo + 256])
    oracle.put(ids[:1500], means[:1500], w[:1500], t[:1500])
    for lo in range(1000, n, 256):
        oracle.put(ids[lo:lo + 256], means[lo:lo + 256] + 1, w[lo:lo + 256], t[lo:lo + 256])
    assert len(store) == n and store.in_memory == 200
    assert list(store._users)[-1] == ids[-1]
    _same(store, oracle, ids)
    store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_forget_and_drop_reach_the_disk(tmp_path, backend):
    store = DiskProfileStore(tmp_path / "p", emb_dim=2, capacity=2, backend=backend)
    for i in range(10):
        store.observe(f"u{i}", np.ones(2), 1.0, now=float(i))
    assert store.forget(["u0", "u9", "nobody", "u0"]) == 2
    assert store.drop(["u1", "u8", "u5"]) == 3
    assert len(store) == 5 and "u0" not in store and "u2" in store
    store.close()
    again = DiskProfileStore(tmp_path / "p", emb_dim=2, capacity=2, backend=backend)
    assert sorted(again.users()) == ["u2", "u3", "u4", "u6", "u7"]
    assert not again.get("u0").any() and again.get("u2").any()
    again.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_ttl_forgets_idle_users_in_memory_and_on_disk(tmp_path, backend):
    store = DiskProfileStore(tmp_path / "p", emb_dim=2, capacity=2, ttl_seconds=10.0,
                             backend=backend)
    oracle = ProfileStore(emb_dim=2, capacity=100, ttl_seconds=10.0)
    for s in (store, oracle):
        for i, u in enumerate("abcdef"):
            s.observe(u, np.ones(2), 1.0, now=float(i))
    # a is on disk, expired at 12: forgotten when read
    assert not store.get("a", now=12.0).any() and "a" not in store
    assert not oracle.get("a", now=12.0).any()
    assert store.expire(now=12.5) == oracle.expire(now=12.5) == 2  # b and c
    assert sorted(store.users()) == sorted(oracle.users()) == ["d", "e", "f"]
    assert store.expirations == oracle.expirations == 3
    store.close()


def test_bad_input_is_refused_with_a_clear_error(tmp_path):
    store = DiskProfileStore(tmp_path / "p", emb_dim=2, capacity=2)
    with pytest.raises(TypeError, match="string"):
        store.observe(7, np.ones(2), 1.0)
    with pytest.raises(ValueError, match="2 values"):
        store.observe("u", np.ones(3), 1.0)
    with pytest.raises(ValueError, match="differ in length"):
        store.put(["a", "b"], np.ones((1, 2)), np.ones(2), np.ones(2))
    store.close()
    with pytest.raises(ValueError, match="unknown profile store backend 'lmdb'"):
        DiskProfileStore(tmp_path / "q", emb_dim=2, backend="lmdb")
    other = DiskProfileStore(tmp_path / "p", emb_dim=2, capacity=2)
    other.observe("x", np.ones(2), 1.0)
    other.close()
    wider = DiskProfileStore(tmp_path / "p", emb_dim=4, capacity=2)  # another emb_dim
    with pytest.raises(ValueError, match="24 bytes, not 32"):
        wider.get("x")
    wider.close()


def test_rocksdb_refuses_a_second_open_of_one_directory_until_closed(tmp_path):
    """RocksDB's own lock: two stores on one directory would corrupt each other."""
    store = DiskProfileStore(tmp_path / "p", emb_dim=2, capacity=1)
    store.observe("a", np.ones(2), 1.0)
    with pytest.raises(Exception, match=r"(?i)lock"):
        DiskProfileStore(tmp_path / "p", emb_dim=2)
    store.close()
    store.close()  # twice: nothing more
    other = DiskProfileStore(tmp_path / "p", emb_dim=2)
    assert "a" in other
    other.close()
    assert store.get("a").tolist() == [1.0, 1.0]  # a closed store used again reopens
    store.close()
