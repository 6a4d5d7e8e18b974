"""LinUCB: scores, slates, ε-mix propensities, validation."""

from __future__ import annotations

import numpy as np
import pytest
from banditdata import make_stream, rel_err, ridge

from bandits import InvalidInput, LinUCB

D = 5


def trained(alpha=1.0, epsilon=0.0, seed=0, lam=1.0) -> LinUCB:
    X, r = make_stream(seed, 50, D)
    p = LinUCB(dim=D, alpha=alpha, lam=lam, epsilon=epsilon, feature_space="fs", seed=seed)
    p.update(X[:20], r[:20])
    for i in range(20, 50):
        p.update(X[i:i + 1], r[i:i + 1])
    return p


def test_theta_and_counts_after_mixed_updates():
    X, r = make_stream(0, 50, D)
    p = trained(lam=2.0)
    assert p.n_updates == 50
    assert rel_err(p.theta, ridge(X, r, 2.0)) < 1e-8
    assert p.stats.n == 50


def test_score_is_theta_phi_plus_alpha_width():
    X, r = make_stream(0, 50, D)
    p = trained(alpha=0.7)
    Q = np.random.default_rng(9).normal(size=(12, D))
    A_inv = np.linalg.inv(np.eye(D) + X.T @ X)
    theta = ridge(X, r, 1.0)
    width = np.sqrt(np.einsum("ij,jk,ik->i", Q, A_inv, Q))
    np.testing.assert_allclose(p.widths(Q), width, rtol=1e-9)
    np.testing.assert_allclose(p.score(Q), Q @ theta + 0.7 * width, rtol=1e-8, atol=1e-10)


def test_select_is_top_k_ranked_with_unit_propensities():
    p = trained()
    Q = np.random.default_rng(1).normal(size=(9, D))
    s = p.select(Q, k=4)
    scores = p.score(Q)
    assert s.indices.dtype == np.intp
    assert s.indices.tolist() == np.argsort(-scores)[:4].tolist()
    np.testing.assert_array_equal(s.propensities, np.ones(4))
    np.testing.assert_array_equal(s.scores, scores[s.indices])
    assert s.candidate_propensities.sum() == 4
    assert len(p.select(Q, k=20)) == 9


def test_bonus_is_added_before_choosing():
    p = LinUCB(dim=2, alpha=0.0, feature_space="fs")
    p.update(np.array([[1.0, 0.0]]), np.array([1.0]))
    Q = np.eye(2)
    assert p.select(Q, k=1).indices.tolist() == [0]
    s = p.select(Q, k=1, bonus=np.array([0.0, 1.0]))
    assert s.indices.tolist() == [1] and s.scores.tolist() == [1.0]


def test_epsilon_mix_closed_form_propensities_and_empirical_frequencies():
    eps, k, n = 0.3, 3, 8
    p = trained(epsilon=eps)
    Q = np.random.default_rng(2).normal(size=(n, D))
    top = set(np.argsort(-p.score(Q))[:k].tolist())
    expected = np.array([(1 - eps) * (i in top) + eps * k / n for i in range(n)])
    rng = np.random.default_rng(3)
    trials = 4000
    freq = np.zeros(n)
    for _ in range(trials):
        s = p.select(Q, k=k, rng=rng)
        np.testing.assert_allclose(s.candidate_propensities, expected, rtol=1e-15)
        np.testing.assert_allclose(s.propensities, expected[s.indices], rtol=1e-15)
        assert np.all(s.propensities > 0)
        freq[s.indices] += 1
    assert s.candidate_propensities.sum() == pytest.approx(k, abs=1e-12)
    # binomial: 4.5 standard errors, sqrt(p(1-p)/trials) <= 0.0079
    se = np.sqrt(expected * (1 - expected) / trials)
    assert np.all(np.abs(freq / trials - expected) <= 4.5 * se + 1e-12)


def test_invalid_inputs_are_rejected():
    p = LinUCB(dim=3, feature_space="fs")
    with pytest.raises(InvalidInput):
        p.score(np.zeros((2, 4)))
    with pytest.raises(InvalidInput):
        p.update(np.array([[np.nan, 0, 0]]), np.array([1.0]))
    with pytest.raises(InvalidInput):
        p.update(np.zeros((2, 3)), np.zeros(3))
    with pytest.raises(InvalidInput):
        p.select(np.zeros((2, 3)), k=0)
    with pytest.raises(InvalidInput):
        p.select(np.zeros((2, 3)), k=1, bonus=np.zeros(3))
    with pytest.raises(InvalidInput):
        LinUCB(dim=3, lam=0.0)
    with pytest.raises(InvalidInput):
        LinUCB(dim=3, gamma=1.5)
    with pytest.raises(InvalidInput):
        LinUCB(dim=3, epsilon=-0.1)


def test_empty_candidate_set_gives_empty_slate():
    s = LinUCB(dim=3, feature_space="fs").select(np.zeros((0, 3)), k=2)
    assert len(s) == 0 and s.propensities.shape == (0,)


def test_repr_is_readable():
    text = repr(trained(alpha=0.5))
    assert "LinUCB(algorithm='linucb', dim=5, n_updates=50" in text and "alpha=0.5" in text
