"""Exposure control at serving time: FairCo brings exposure shares towards merit shares."""

from __future__ import annotations

import numpy as np
import pytest

from bandits import ExposureController
from stream.serve import Recommender
from stream.settings import Settings
from tests.stream.serve.conftest import make_bundle, open_bundle

pytestmark = pytest.mark.model


def exposure_vs_merit(ml_catalog, lam: float) -> tuple[float, float]:
    """Serve 300 requests; return (tail exposure share, tail share of estimated merit)."""
    settings = Settings()
    rec = Recommender(seed=0, exposure=ExposureController(lam=lam))
    groups = [g.get("popularity", "unknown") for g in ml_catalog.groups]
    rec.set_catalog(ml_catalog.ids, ml_catalog.embeddings, groups)
    bundle = open_bundle(settings, make_bundle(settings, ml_catalog, 1, updates=500))
    rec.set_policy(bundle)
    rng = np.random.default_rng(0)
    weights = 1 / np.log2(np.arange(2, 7))
    exposure, merit = {"head": 0.0, "tail": 0.0}, {"head": 0.0, "tail": 0.0}
    for n in range(300):
        cands = list(rng.choice(ml_catalog.ids, size=20, replace=False))
        answer = rec.recommend(f"u{n}", {"gender": "F", "age": 30}, cands, 5)
        for w, item in zip(weights, answer.items, strict=True):
            exposure[groups[ml_catalog.index[item]]] += w
        # Merit as the controller sees it: the model's relevance estimate of each candidate.
        rows = np.array([ml_catalog.index[c] for c in cands])
        X = bundle.fmap.transform(None, np.zeros(384), {"gender": "F", "age": 30},
                                  adapted_items=bundle.fmap.adapt(ml_catalog.embeddings[rows]))
        for c, m in zip(cands, np.maximum(bundle.policy.predict(X), 0.0), strict=True):
            merit[groups[ml_catalog.index[c]]] += m * weights.sum() / 20
    return (exposure["tail"] / sum(exposure.values()), merit["tail"] / sum(merit.values()))


def test_exposure_controller_brings_exposure_towards_merit(ml_catalog):
    off_exposure, off_merit = exposure_vs_merit(ml_catalog, 0.0)
    on_exposure, on_merit = exposure_vs_merit(ml_catalog, 0.05)
    assert on_merit == pytest.approx(off_merit)  # same requests, same model
    assert abs(on_exposure - on_merit) < 0.5 * abs(off_exposure - off_merit), (
        off_exposure, on_exposure, off_merit)


def test_exposure_strength_setting_is_validated():
    from stream.exceptions import ConfigError

    with pytest.raises(ConfigError, match=r"fairness\.exposure_strength"):
        Settings().replace(fairness={"exposure_strength": -1.0})


def tail_exposure_vs_candidates(ml_catalog, lam: float) -> tuple[float, float]:
    """300 requests with the candidates target: (tail exposure share, tail candidate share)."""
    settings = Settings()
    rec = Recommender(seed=0, exposure=ExposureController(lam=lam, target="candidates"))
    groups = [g.get("popularity", "unknown") for g in ml_catalog.groups]
    rec.set_catalog(ml_catalog.ids, ml_catalog.embeddings, groups)
    rec.set_policy(open_bundle(settings, make_bundle(settings, ml_catalog, 1, updates=500)))
    rng = np.random.default_rng(0)
    weights = 1 / np.log2(np.arange(2, 7))
    exposure, tail_cands = {"head": 0.0, "tail": 0.0}, 0
    for n in range(300):
        cands = list(rng.choice(ml_catalog.ids, size=20, replace=False))
        tail_cands += sum(groups[ml_catalog.index[c]] == "tail" for c in cands)
        answer = rec.recommend(f"u{n}", {"gender": "F", "age": 30}, cands, 5)
        for w, item in zip(weights, answer.items, strict=True):
            exposure[groups[ml_catalog.index[item]]] += w
    return exposure["tail"] / sum(exposure.values()), tail_cands / (300 * 20)


def test_candidates_target_brings_tail_exposure_towards_its_candidate_share(ml_catalog):
    off, share = tail_exposure_vs_candidates(ml_catalog, 0.0)
    on, same_share = tail_exposure_vs_candidates(ml_catalog, 0.05)
    assert same_share == share  # the same requests
    assert abs(on - share) < 0.5 * abs(off - share), (off, on, share)
