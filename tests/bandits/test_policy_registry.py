"""Factory and public API surface."""

from __future__ import annotations

import numpy as np
import pytest

import bandits
from bandits import (
    EpsilonGreedy,
    InvalidInput,
    LinearTS,
    LinUCB,
    MostPopular,
    Policy,
    UniformRandom,
    policy_from_config,
)


@pytest.mark.parametrize(("name", "cls"), [("linucb", LinUCB), ("ts", LinearTS),
                                           ("egreedy", EpsilonGreedy), ("random", UniformRandom),
                                           ("popular", MostPopular)])
def test_factory_builds_every_policy(name, cls):
    p = policy_from_config(name, dim=3, feature_space="fs", seed=1)
    assert isinstance(p, cls) and isinstance(p, Policy)
    assert p.dim == 3 and p.feature_space == "fs" and p.algorithm == name
    s = p.select(np.eye(3), k=2, item_ids=["a", "b", "c"])
    assert len(s) == 2 and s.propensities.dtype == np.float64
    assert s.candidate_propensities.sum() == pytest.approx(2)


def test_factory_rejects_unknown_names_and_hyper_parameters():
    with pytest.raises(InvalidInput, match="unknown algorithm"):
        policy_from_config("ucb2", dim=3)
    with pytest.raises(InvalidInput, match="alpah"):
        policy_from_config("linucb", dim=3, alpah=1.0)
    p = policy_from_config("ts", dim=3, v=0.2, mc_samples=10, lam=2.0)
    assert (p.v, p.mc_samples, p.lam) == (0.2, 10, 2.0)


def test_public_names():
    for name in ["Policy", "Slate", "SufficientStats", "LinUCB", "LinearTS", "EpsilonGreedy",
                 "UniformRandom", "MostPopular", "FairnessTracker", "ExposureController",
                 "popularity_groups", "dump_snapshot", "load_snapshot", "policy_from_config",
                 "SnapshotError", "FeatureSpaceMismatch"]:
        assert name in bandits.__all__ and hasattr(bandits, name)
