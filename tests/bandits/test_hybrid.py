"""Hybrid policies: exact joint ridge, joint posterior, merge, snapshots, eviction, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from banditdata import rel_err

from bandits import (
    FeatureSpaceMismatch,
    HybridLinUCB,
    HybridStats,
    HybridTS,
    InvalidInput,
    SufficientStats,
    dump_snapshot,
    load_snapshot,
    policy_from_config,
    read_snapshot,
)

D = 6
ZCOLS = [3, 4, 5]  # column 5 is the constant 1, like φ's bias column
KEY = b"secret"


def hybrid_stream(seed: int, m: int, n_items: int = 5) -> tuple[np.ndarray, np.ndarray, list]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(m, D))
    X[:, 5] = 1.0
    X[:, 3] = rng.integers(0, 2, size=m)  # attribute one-hots
    X[:, 4] = 1.0 - X[:, 3]
    items = rng.integers(0, n_items, size=m)
    theta_item = rng.normal(size=(n_items, 3))
    r = X @ rng.normal(size=D) + np.einsum("ij,ij->i", X[:, ZCOLS], theta_item[items])
    r += 0.1 * rng.normal(size=m)
    return X, r, [f"i{j}" for j in items]


def joint_system(X, r, blocks, z, lam):
    """Direct joint ridge: columns [φ | z for block 0 | z for block 1 | ...].

    ``blocks`` is a list of boolean row masks (rows that belong to that block).
    Returns (P, solution) with P = λI + DᵀD.
    """
    Z = np.ones((X.shape[0], 1)) if z == "bias" else X[:, z]
    k, d = Z.shape[1], X.shape[1]
    Dm = np.zeros((X.shape[0], d + k * len(blocks)))
    Dm[:, :d] = X
    for j, mask in enumerate(blocks):
        Dm[mask, d + j * k:d + (j + 1) * k] = Z[mask]
    P = lam * np.eye(Dm.shape[1]) + Dm.T @ Dm
    return P, np.linalg.solve(P, Dm.T @ r)


def learn(p, X, r, ids, batch=7):
    """Mixed batch and single-row updates."""
    m = X.shape[0]
    p.update(X[:batch], r[:batch], ids[:batch])
    for i in range(batch, m // 2):
        p.update(X[i:i + 1], r[i:i + 1], ids[i:i + 1])
    p.update(X[m // 2:], r[m // 2:], ids[m // 2:])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("z", ["bias", ZCOLS])
def test_equals_direct_joint_ridge_solution_and_joint_widths(seed, z):
    X, r, ids = hybrid_stream(seed, 80)
    p = HybridLinUCB(dim=D, alpha=0.7, z=z, lam=0.5, feature_space="fs")
    learn(p, X, r, ids)
    items = sorted(set(ids))
    P, sol = joint_system(X, r, [np.array(ids) == a for a in items], z, 0.5)
    k = 1 if z == "bias" else len(z)
    assert rel_err(p.beta, sol[:D]) < 1e-8
    for j, a in enumerate(items):
        assert rel_err(p.theta(a), sol[D + j * k:D + (j + 1) * k]) < 1e-8
    # widths: s² = xᵀP⁻¹x for the joint feature vector; an unseen item gets a prior block
    Pn = np.zeros((P.shape[0] + k, P.shape[0] + k))
    Pn[:P.shape[0], :P.shape[0]] = P
    Pn[P.shape[0]:, P.shape[0]:] = 0.5 * np.eye(k)
    Q, _, _ = hybrid_stream(seed + 10, 8)
    cand = [items[0], items[2], "unseen", items[0], "unseen2", items[1], items[3], items[4]]
    Zq = np.ones((8, 1)) if z == "bias" else Q[:, z]
    xs = np.zeros((8, Pn.shape[0]))
    xs[:, :D] = Q
    for n, a in enumerate(cand):
        j = items.index(a) if a in items else len(items)
        xs[n, D + j * k:D + (j + 1) * k] = Zq[n]
    sol_n = np.r_[sol, np.zeros(k)]
    mean = xs @ sol_n
    width = np.sqrt(np.einsum("ij,ij->i", xs @ np.linalg.inv(Pn), xs))
    np.testing.assert_allclose(p.predict(Q, cand), mean, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(p.widths(Q, cand), width, rtol=1e-8)
    np.testing.assert_allclose(p.score(Q, cand), mean + 0.7 * width, rtol=1e-8, atol=1e-10)
    # a recomputation from the raw statistics changes nothing beyond rounding
    before = p.beta
    p.recompute()
    assert rel_err(p.beta, before) < 1e-12


def test_never_seen_item_is_scored_from_the_shared_part_alone():
    X, r, ids = hybrid_stream(3, 60)
    p = HybridLinUCB(dim=D, alpha=0.0, z=ZCOLS, feature_space="fs")
    p.update(X, r, ids)
    Q, _, _ = hybrid_stream(4, 5)
    np.testing.assert_allclose(p.score(Q, ["new"] * 5), Q @ p.beta, rtol=1e-15)
    np.testing.assert_allclose(p.score(Q), Q @ p.beta, rtol=1e-15)  # no ids: all unseen
    assert p.theta("new").tolist() == [0.0, 0.0, 0.0]
    ts = HybridTS(dim=D, z=ZCOLS, feature_space="fs")
    ts.update(X, r, ids)
    np.testing.assert_allclose(ts.score(Q, ["new"] * 5), Q @ ts.beta, rtol=1e-15)


def test_ts_mean_is_the_ridge_solution_and_draws_have_the_joint_covariance():
    X, r, ids = hybrid_stream(5, 40, n_items=3)
    p = HybridTS(dim=D, v=0.5, z=ZCOLS, lam=1.0, seed=11, feature_space="fs")
    learn(p, X, r, ids)
    items = ["i0", "i2", "never"]
    P, sol = joint_system(X, r, [np.array(ids) == a for a in ["i0", "i1", "i2"]], ZCOLS, 1.0)
    cov = 0.25 * np.linalg.inv(P)
    keep = [*range(D), *range(D, D + 3), *range(D + 6, D + 9)]  # β, θ_i0, θ_i2
    Pn = np.zeros((D + 12, D + 12))
    Pn[:D + 9, :D + 9] = P
    Pn[D + 9:, D + 9:] = np.eye(3)
    cov_n = 0.25 * np.linalg.inv(Pn)
    keep_n = [*keep, *range(D + 9, D + 12)]
    mean_n = np.r_[sol[keep], np.zeros(3)]
    N = 40_000
    b, th = p.sample_params(items, size=N, rng=np.random.default_rng(7))
    draws = np.hstack([b, th.reshape(N, -1)])
    se = np.sqrt(np.diag(cov_n[np.ix_(keep_n, keep_n)]) / N)
    assert np.all(np.abs(draws.mean(axis=0) - mean_n) <= 4.5 * se)
    emp = np.cov(draws, rowvar=False)
    target = cov_n[np.ix_(keep_n, keep_n)]
    sd = np.sqrt(np.diag(target))
    # entrywise standard error of a sample covariance is ≈ σ_iσ_j·sqrt((1+ρ²)/N) ≤ σ_iσ_j·0.0071
    assert np.all(np.abs(emp - target) <= 5 * 0.0071 * np.outer(sd, sd))
    np.testing.assert_allclose(p.score(X[:4], ids[:4]), p.predict(X[:4], ids[:4]), rtol=1e-15)
    # the score draws the slates rank: mean = posterior mean, variance = v²·s² (held and unseen)
    Q, cand = X[:3], ["i0", "i2", "never"]
    rng = np.random.default_rng(8)
    S = np.array([p.sample_scores(Q, cand, rng=rng) for _ in range(4000)])
    var = 0.25 * p.widths(Q, cand) ** 2
    assert np.all(np.abs(S.mean(axis=0) - p.predict(Q, cand)) <= 4.5 * np.sqrt(var / 4000))
    assert np.all(np.abs(S.var(axis=0) / var - 1) <= 5 * np.sqrt(2 / 4000))
    assert rel_err(p.beta, sol[:D]) < 1e-8 and cov.shape == P.shape


def test_ts_slate_has_mc_propensities_and_duplicates_share_a_draw():
    X, r, ids = hybrid_stream(6, 50)
    p = HybridTS(dim=D, v=0.3, z=ZCOLS, mc_samples=400, seed=1, feature_space="fs")
    p.update(X, r, ids)
    Q, _, _ = hybrid_stream(7, 6)
    s = p.select(Q, k=2, item_ids=["i0", "i1", "i2", "i3", "new", "i0"])
    assert s.method == "thompson-mc" and len(s) == 2
    assert s.candidate_propensities.sum() == pytest.approx(2.0)
    assert np.all(s.propensities > 0) and np.all(s.propensity_se >= 0)
    same = p.sample_scores(np.vstack([Q[0], Q[0]]), ["i0", "i0"], rng=np.random.default_rng(0))
    assert same[0] == same[1]


def test_ucb_epsilon_mix_has_closed_form_propensities():
    X, r, ids = hybrid_stream(8, 50)
    p = HybridLinUCB(dim=D, alpha=0.5, epsilon=0.2, z=ZCOLS, seed=0, feature_space="fs")
    p.update(X, r, ids)
    Q, _, cand = hybrid_stream(9, 8)
    top = set(np.argsort(-p.score(Q, cand), kind="stable")[:3].tolist())
    s = p.select(Q, k=3, item_ids=cand)
    expected = [0.8 * (i in top) + 0.2 * 3 / 8 for i in range(8)]
    np.testing.assert_allclose(s.candidate_propensities, expected, rtol=1e-15)


@pytest.mark.parametrize("cls", [HybridLinUCB, HybridTS])
def test_shards_merged_equal_one_pass(cls):
    X, r, ids = hybrid_stream(10, 90, n_items=7)
    whole = cls(dim=D, z=ZCOLS, lam=0.8, feature_space="fs")
    learn(whole, X, r, ids)
    shards = [cls(dim=D, z=ZCOLS, lam=0.8, feature_space="fs") for _ in range(3)]
    for j, sh in enumerate(shards):
        rows = np.arange(j, 90, 3)
        learn(sh, X[rows], r[rows], [ids[i] for i in rows], batch=4)
    own = [sh.stats for sh in shards]
    for j, sh in enumerate(shards):
        for i, st in enumerate(own):
            if i != j:
                sh.merge(st)
    Q, _, cand = hybrid_stream(11, 9, n_items=8)
    for sh in shards:
        assert rel_err(sh.beta, whole.beta) < 1e-9
        for a in set(ids):
            assert rel_err(sh.theta(a), whole.theta(a)) < 1e-9
        np.testing.assert_allclose(sh.score(Q, cand), whole.score(Q, cand), rtol=1e-9)
        assert sh.total_stats.allclose(whole.total_stats)
        assert sh.n_observations == 90 and sh.stats.n == 30
    assert sum(own, HybridStats.empty(D, ZCOLS, "fs")).allclose(whole.stats)


def test_published_deltas_add_up():
    X, r, ids = hybrid_stream(12, 40)
    a = HybridLinUCB(dim=D, z=ZCOLS, feature_space="fs")
    b = HybridLinUCB(dim=D, z=ZCOLS, feature_space="fs")
    published = HybridStats.empty(D, ZCOLS, "fs")
    for lo in range(0, 40, 10):
        a.update(X[lo:lo + 10], r[lo:lo + 10], ids[lo:lo + 10])
        now = a.stats
        b.merge(now - published)
        published = now
    assert rel_err(b.beta, a.beta) < 1e-9
    assert b.stats.n == 0 and b.n_observations == 40


@pytest.mark.parametrize("algorithm", ["hybrid_linucb", "hybrid_ts"])
def test_signed_snapshot_round_trip_is_exact(algorithm):
    X, r, ids = hybrid_stream(13, 60)
    p = policy_from_config(algorithm, dim=D, feature_space="fs", seed=2, z=ZCOLS, max_items=4)
    learn(p, X[:40], r[:40], ids[:40])
    other = policy_from_config(algorithm, dim=D, feature_space="fs", z=ZCOLS, max_items=4)
    other.update(X[40:], r[40:], ids[40:])
    p.merge(other.stats)  # own statistics now differ from the total
    Q, _, cand = hybrid_stream(14, 6)
    p.select(Q, k=2, item_ids=cand)  # advances the rng
    data = dump_snapshot(p, KEY, version=4)
    header, q = read_snapshot(data, KEY)
    assert type(q) is type(p) and header["algorithm"] == algorithm and q.version == 4
    assert q.hyper_parameters() == p.hyper_parameters()
    assert q.item_ids == p.item_ids and q.evictions == p.evictions
    sp, sq = p.snapshot(), q.snapshot()
    assert sp.params == sq.params and sp.arrays.keys() == sq.arrays.keys()
    for name in sp.arrays:
        assert sp.arrays[name].tobytes() == sq.arrays[name].tobytes(), name
    assert p.score(Q, cand).tobytes() == q.score(Q, cand).tobytes()
    for _ in range(3):
        a, b = p.select(Q, k=2, item_ids=cand), q.select(Q, k=2, item_ids=cand)
        assert a.indices.tolist() == b.indices.tolist()
        assert a.propensities.tobytes() == b.propensities.tobytes()
    assert p.stats.allclose(q.stats) and p.total_stats.allclose(q.total_stats)
    p.update(Q, np.ones(6), cand)
    q.update(Q, np.ones(6), cand)
    assert p.beta.tobytes() == q.beta.tobytes()
    with pytest.raises(FeatureSpaceMismatch):
        load_snapshot(data, KEY, feature_space="other")


def test_eviction_is_least_recently_updated_and_exact():
    X, r, _ = hybrid_stream(15, 12)
    ids = ["a", "b", "c", "a", "d", "e", "b", "a", "f", "c", "c", "a"]
    rows = HybridLinUCB(dim=D, z=ZCOLS, max_items=3, feature_space="fs")
    for i in range(12):
        rows.update(X[i:i + 1], r[i:i + 1], ids[i:i + 1])
    batch = HybridLinUCB(dim=D, z=ZCOLS, max_items=3, feature_space="fs")
    batch.update(X, r, ids)  # the cap bites inside the batch: same result as row by row
    # row by row: d evicts b, e evicts c, b evicts a, a evicts d, f evicts e, c evicts b
    assert rows.item_ids == ["f", "c", "a"] == batch.item_ids
    assert rows.evictions == 6 == batch.evictions
    # blocks hold the rows since each item's last (re)entry; evicted rows stay shared-only
    blocks = [np.isin(np.arange(12), rows_of) for rows_of in ([8], [9, 10], [7, 11])]
    _, sol = joint_system(X, r, blocks, ZCOLS, 1.0)
    for p in (rows, batch):
        assert rel_err(p.beta, sol[:D]) < 1e-8
        assert rel_err(p.theta("c"), sol[D + 3:D + 6]) < 1e-8
        assert rel_err(p.theta("a"), sol[D + 6:D + 9]) < 1e-8
    Q, _, _ = hybrid_stream(16, 2)
    np.testing.assert_allclose(rows.predict(Q, ["b", "e"]), Q @ rows.beta, rtol=1e-15)


def test_merge_applies_the_cap_deterministically():
    X, r, ids = hybrid_stream(17, 60, n_items=6)
    src = HybridLinUCB(dim=D, z="bias", feature_space="fs")
    src.update(X, r, ids)
    st = src.stats
    perm = np.random.default_rng(0).permutation(len(st.item_ids))
    shuffled = HybridStats(st.xtx, st.xty, st.n, "fs", z="bias",
                           item_ids=tuple(st.item_ids[j] for j in perm),
                           item_xz=st.item_xz[perm], item_zr=st.item_zr[perm],
                           item_n=st.item_n[perm])
    held = []
    for s in (st, shuffled):
        p = HybridLinUCB(dim=D, z="bias", max_items=4, feature_space="fs")
        p.merge(s)
        held.append((p.item_ids, p.beta.tobytes()))
    assert held[0] == held[1]
    counts = dict(zip(st.item_ids, st.item_n, strict=True))
    kept = sorted(st.item_ids, key=lambda i: (counts[i], i))[-4:]
    assert held[0][0] == kept  # the items with the most incoming rows survive


def test_bad_input_is_rejected_and_leaves_state_unchanged():
    X, r, ids = hybrid_stream(18, 20)
    p = HybridLinUCB(dim=D, z=ZCOLS, feature_space="fs")
    p.update(X, r, ids)
    before = p.snapshot()
    good = X[:2].copy()
    bad_rows = [good.copy(), good.copy()]
    bad_rows[0][1, 2] = np.nan
    bad_rows[1][0, 0] = np.inf
    for bad in bad_rows:
        with pytest.raises(InvalidInput, match="non-finite"):
            p.update(bad, r[:2], ids[:2])
    cases = [
        (lambda: p.update(good, np.array([1.0, np.nan]), ids[:2]), "non-finite"),
        (lambda: p.update(good, r[:2], ["a", 7]), "must be str, got int"),
        (lambda: p.update(good, r[:2], [b"a", "b"]), "must be str, got bytes"),
        (lambda: p.update(good, r[:2], "ab"), "not one string"),
        (lambda: p.update(good, r[:2]), "needs item_ids"),
        (lambda: p.update(good, r[:2], ids[:3]), "length 2"),
        (lambda: p.update(good[:, :4], r[:2], ids[:2]), "shape"),
        (lambda: p.update(good, r[:3], ids[:2]), "shape"),
        (lambda: p.score(good, [1, 2]), "must be str"),
        (lambda: p.merge(HybridStats.empty(D, "bias", "fs")), "z layout"),
        (lambda: p.merge(SufficientStats.zeros(D + 1, "fs")), "dim"),
    ]
    for call, message in cases:
        with pytest.raises(InvalidInput, match=message):
            call()
    with pytest.raises(FeatureSpaceMismatch):
        p.merge(HybridStats.empty(D, ZCOLS, "other"))
    after = p.snapshot()
    assert before.params == after.params and before.n_updates == after.n_updates
    for name in before.arrays:
        assert before.arrays[name].tobytes() == after.arrays[name].tobytes(), name
    for kwargs in ({"z": [0, 0]}, {"z": [D]}, {"z": "attrs"}, {"max_items": 0},
                   {"gamma": 0.9}, {"lam": 0.0}, {"alpha": -1.0}):
        with pytest.raises(InvalidInput):
            HybridLinUCB(dim=D, feature_space="fs", **kwargs)


def test_plain_shared_statistics_merge_as_shared_rows():
    X, r, _ = hybrid_stream(19, 30)
    p = HybridLinUCB(dim=D, z=ZCOLS, feature_space="fs")
    p.merge(SufficientStats.from_batch(X, r, "fs"))
    _, sol = joint_system(X, r, [], ZCOLS, 1.0)
    assert rel_err(p.beta, sol) < 1e-10 and p.item_ids == []


def test_registry_and_repr():
    p = policy_from_config("hybrid_ts", dim=D, feature_space="fs", seed=0, v=0.2, z=ZCOLS)
    assert isinstance(p, HybridTS) and p.z == (3, 4, 5) and p.v == 0.2
    q = policy_from_config("hybrid_linucb", dim=D, feature_space="fs", alpha=0.3)
    assert isinstance(q, HybridLinUCB) and q.z == "bias"
    q.update(np.ones((1, D)), np.ones(1), ["x"])
    assert repr(q) == ("HybridLinUCB(algorithm='hybrid_linucb', dim=6, n_updates=1, "
                       "feature_space='fs', alpha=0.3, epsilon=0.0, z='bias', lam=1.0, "
                       "max_items=100000, items=1/100000)")
    assert q.nbytes() > 0
