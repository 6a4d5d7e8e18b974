"""Baselines: uniform random, most-popular, ε-greedy."""

from __future__ import annotations

import numpy as np
import pytest
from banditdata import make_stream, rel_err, ridge

from bandits import EpsilonGreedy, InvalidInput, MostPopular, UniformRandom


def test_uniform_random_propensities_and_frequencies():
    n, k, trials = 7, 3, 4000
    p = UniformRandom(dim=2, feature_space="fs", seed=0)
    X = np.zeros((n, 2))
    freq = np.zeros(n)
    for _ in range(trials):
        s = p.select(X, k=k)
        assert len(set(s.indices.tolist())) == k
        np.testing.assert_allclose(s.propensities, k / n)
        freq[s.indices] += 1
    assert s.candidate_propensities.sum() == pytest.approx(k)
    se = np.sqrt(k / n * (1 - k / n) / trials)
    assert np.all(np.abs(freq / trials - k / n) <= 4.5 * se)
    p.update(X, np.ones(n))
    assert p.n_updates == n and p.stats.n == n


def test_most_popular_counts_rank_and_merge():
    p = MostPopular(dim=1, feature_space="fs")
    X1 = np.zeros((1, 1))
    for item, reward in [("a", 1.0), ("b", 1.0), ("b", 1.0), ("c", 0.0), ("a", 0.5)]:
        p.update(X1, np.array([reward]), item_ids=[item])
    assert p.counts == {"a": 1.5, "b": 2.0, "c": 0.0}
    ids = ["c", "a", "zzz", "b"]
    np.testing.assert_array_equal(p.score(np.zeros((4, 1)), item_ids=ids), [0.0, 1.5, 0.0, 2.0])
    s = p.select(np.zeros((4, 1)), k=2, item_ids=ids)
    assert s.indices.tolist() == [3, 1] and s.propensities.tolist() == [1.0, 1.0]
    other = MostPopular(dim=1, feature_space="fs")
    other.update(np.zeros((2, 1)), np.array([5.0, 1.0]), item_ids=["zzz", "a"])
    p.merge(other.stats)
    assert p.counts == {"a": 2.5, "b": 2.0, "c": 0.0, "zzz": 5.0}
    assert p.stats.item_counts == {"a": 1.5, "b": 2.0, "c": 0.0}  # own rows only
    with pytest.raises(InvalidInput):
        p.select(np.zeros((4, 1)), k=2)


def test_most_popular_epsilon_mix_never_zero():
    p = MostPopular(dim=1, epsilon=0.2, feature_space="fs", seed=0)
    p.update(np.zeros((1, 1)), np.array([1.0]), item_ids=["a"])
    s = p.select(np.zeros((5, 1)), k=1, item_ids=list("abcde"))
    np.testing.assert_allclose(s.candidate_propensities, [0.84, 0.04, 0.04, 0.04, 0.04])


def test_epsilon_greedy_uses_the_ridge_point_estimate():
    X, r = make_stream(0, 40, 4)
    p = EpsilonGreedy(dim=4, epsilon=0.25, lam=0.5, feature_space="fs", seed=1)
    p.update(X, r)
    assert rel_err(p.theta, ridge(X, r, 0.5)) < 1e-8
    Q = np.random.default_rng(2).normal(size=(6, 4))
    np.testing.assert_allclose(p.score(Q), Q @ p.theta)
    s = p.select(Q, k=2)
    top = np.argsort(-(Q @ p.theta))[:2]
    expected = np.full(6, 0.25 * 2 / 6)
    expected[top] += 0.75
    np.testing.assert_allclose(s.candidate_propensities, expected)
    assert np.all(s.propensities > 0)


def test_reprs():
    assert repr(UniformRandom(dim=3)).startswith("UniformRandom(algorithm='random', dim=3")
    assert "epsilon=0.1" in repr(MostPopular(dim=3, epsilon=0.1))
    assert "EpsilonGreedy(algorithm='egreedy'" in repr(EpsilonGreedy(dim=2))
