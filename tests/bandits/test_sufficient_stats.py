"""Additive statistics: shard merge equals one pass; feature-space guard."""

from __future__ import annotations

import numpy as np
import pytest
from banditdata import make_stream, rel_err

from bandits import (
    EpsilonGreedy,
    FeatureSpaceMismatch,
    InvalidInput,
    LinearTS,
    LinUCB,
    SufficientStats,
)

D = 5


@pytest.mark.parametrize("cls", [LinUCB, LinearTS, EpsilonGreedy])
def test_merge_of_shards_equals_single_pass(cls):
    X, r = make_stream(0, 90, D)
    whole = cls(dim=D, lam=0.8, feature_space="fs")
    whole.update(X, r)
    shards = [cls(dim=D, lam=0.8, feature_space="fs") for _ in range(3)]
    for j, sh in enumerate(shards):  # interleaved partitions, single-row and batch updates
        rows = np.arange(j, 90, 3)
        sh.update(X[rows[:10]], r[rows[:10]])
        for i in rows[10:]:
            sh.update(X[i:i + 1], r[i:i + 1])
    own = [sh.stats for sh in shards]
    for j, sh in enumerate(shards):
        for i, st in enumerate(own):
            if i != j:
                sh.merge(st)
    for sh in shards:
        assert rel_err(sh.theta, whole.theta) < 1e-9
        assert rel_err(sh.A_inv, whole.A_inv) < 1e-9
        assert sh.total_stats.allclose(whole.total_stats)
        assert sh.n_observations == 90 and sh.stats.n == 30


def test_deltas_published_repeatedly_add_up():
    X, r = make_stream(1, 40, D)
    a = LinUCB(dim=D, feature_space="fs")
    b = LinUCB(dim=D, feature_space="fs")
    published = SufficientStats.zeros(D, "fs")
    for lo in range(0, 40, 10):
        a.update(X[lo:lo + 10], r[lo:lo + 10])
        now = a.stats
        b.merge(now - published)
        published = now
    assert rel_err(b.theta, a.theta) < 1e-9
    assert b.stats.n == 0 and b.n_observations == 40


def test_merge_across_feature_spaces_raises():
    a = LinUCB(dim=D, feature_space="pca-abc")
    b = LinUCB(dim=D, feature_space="pca-def")
    b.update(np.ones((1, D)), np.ones(1))
    with pytest.raises(FeatureSpaceMismatch) as info:
        a.merge(b.stats)
    assert info.value.expected == "pca-abc" and info.value.got == "pca-def"
    with pytest.raises(FeatureSpaceMismatch):
        _ = a.stats + b.stats
    with pytest.raises(InvalidInput):
        a.merge(SufficientStats.zeros(D + 1, "pca-abc"))
    with pytest.raises(InvalidInput):
        a.merge((np.eye(D), np.zeros(D), 1))


def test_stats_record_validation_and_from_batch():
    X, r = make_stream(2, 8, 3)
    s = SufficientStats.from_batch(X, r, "fs")
    np.testing.assert_allclose(s.xtx, X.T @ X)
    np.testing.assert_allclose(s.xty, X.T @ r)
    assert s.n == 8 and s.dim == 3 and "n=8" in repr(s)
    with pytest.raises(InvalidInput):
        SufficientStats(np.zeros((2, 3)), np.zeros(2), 0, "fs")
    with pytest.raises(InvalidInput):
        SufficientStats(np.zeros((2, 2)), np.zeros(2), -1, "fs")
    with pytest.raises(InvalidInput):
        _ = SufficientStats.zeros(3, "fs") - s
