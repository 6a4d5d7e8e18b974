"""Linear Thompson sampling: posterior, sampling, Monte-Carlo propensities."""

from __future__ import annotations

import numpy as np
import pytest
from banditdata import make_stream, rel_err

from bandits import LinearTS

D, LAM, V = 4, 1.5, 0.5


def trained(seed=0, mc_samples=1000) -> tuple[LinearTS, np.ndarray, np.ndarray]:
    X, r = make_stream(seed, 30, D)
    p = LinearTS(dim=D, v=V, lam=LAM, seed=seed, mc_samples=mc_samples, feature_space="fs")
    p.update(X[:10], r[:10])
    for i in range(10, 30):
        p.update(X[i:i + 1], r[i:i + 1])
    return p, X, r


def test_posterior_matches_closed_form():
    p, X, r = trained()
    A = LAM * np.eye(D) + X.T @ X
    assert rel_err(p.theta, np.linalg.solve(A, X.T @ r)) < 1e-8
    assert rel_err(p.posterior_cov, V ** 2 * np.linalg.inv(A)) < 1e-8
    Q = np.random.default_rng(1).normal(size=(5, D))
    np.testing.assert_allclose(p.score(Q), Q @ np.linalg.solve(A, X.T @ r), rtol=1e-8)


def test_sampled_thetas_converge_to_posterior():
    p, _, _ = trained()
    N = 40000
    draws = p.sample_theta(N, rng=np.random.default_rng(2))
    assert draws.shape == (N, D)
    cov = p.posterior_cov
    # mean: each coordinate within 5 standard errors sqrt(cov_ii / N)
    assert np.all(np.abs(draws.mean(0) - p.theta) <= 5 * np.sqrt(np.diag(cov) / N))
    # covariance: relative Frobenius error of the sample covariance, O(1/sqrt(N)) ≈ 0.01
    assert rel_err(np.cov(draws.T), cov) < 0.05


def test_propensities_sum_to_k_and_match_selection_frequencies():
    p, _, _ = trained(mc_samples=20000)
    Q = np.random.default_rng(3).normal(size=(6, D)) * 0.3
    k = 2
    s = p.select(Q, k=k, rng=np.random.default_rng(4))
    assert s.method == "thompson-mc"
    assert s.candidate_propensities.sum() == pytest.approx(k, abs=1e-12)
    est = s.candidate_propensities
    np.testing.assert_array_equal(s.propensities, np.maximum(est[s.indices], 1 / 20000))
    np.testing.assert_allclose(s.propensity_se, np.sqrt(est * (1 - est) / 20000)[s.indices])
    assert np.all(s.propensity_se <= 0.5 / np.sqrt(20000))
    # empirical frequency of the item in the shown slates over repeated selections
    fast = LinearTS(dim=D, v=V, lam=LAM, mc_samples=1, feature_space="fs")
    fast.merge(p.total_stats)
    rng = np.random.default_rng(5)
    trials = 3000
    freq = np.zeros(len(Q))
    for _ in range(trials):
        freq[fast.select(Q, k=k, rng=rng).indices] += 1
    freq /= trials
    # tolerance: 4.5 SE of the difference of two binomial proportions (3000 and 20000 draws)
    tol = 4.5 * np.sqrt(est * (1 - est) * (1 / trials + 1 / 20000)) + 1e-3
    assert np.all(np.abs(freq - est) <= tol)


def test_seeded_selection_is_reproducible_and_full_slate_is_certain():
    a, _, _ = trained(seed=7)
    b, _, _ = trained(seed=7)
    Q = np.random.default_rng(8).normal(size=(10, D))
    sa, sb = a.select(Q, k=3), b.select(Q, k=3)
    np.testing.assert_array_equal(sa.indices, sb.indices)
    np.testing.assert_array_equal(sa.propensities, sb.propensities)
    full = a.select(Q[:3], k=5)
    assert sorted(full.indices.tolist()) == [0, 1, 2]
    np.testing.assert_array_equal(full.propensities, np.ones(3))


def test_large_bonus_dominates_sampled_scores():
    p, _, _ = trained(mc_samples=500)
    Q = np.random.default_rng(9).normal(size=(5, D))
    s = p.select(Q, k=1, bonus=np.array([0, 0, 0, 1e6, 0.0]))
    assert s.indices.tolist() == [3] and s.propensities.tolist() == [1.0]


def test_rng_argument_accepted_in_constructor():
    p = LinearTS(dim=2, rng=np.random.default_rng(0), feature_space="fs")
    assert "LinearTS(algorithm='ts', dim=2" in repr(p) and "v=1.0" in repr(p)
