"""``"explain": true`` on /recommend: each score in parts that sum to it, each part checked
against the policy's own closed forms, and nothing computed when it is off."""

from __future__ import annotations

import json

import numpy as np
import pytest
from starlette.testclient import TestClient

import stream.serve.recommender as recommender_module
from bandits import ExposureController
from stream.serve import Recommender, ServeContext, create_app
from stream.settings import Settings
from tests.stream.serve.conftest import make_bundle, open_bundle

pytestmark = pytest.mark.model

USER = {"gender": "F", "age": 31}


def serve(catalog, settings, exposure: float = 0.0, recent=None):
    rec = Recommender(seed=3, exposure=ExposureController(lam=exposure), recent=recent)
    groups = [g.get("popularity", "unknown") for g in catalog.groups]
    rec.set_catalog(catalog.ids, catalog.embeddings, groups)
    bundle = open_bundle(settings, make_bundle(settings, catalog, 1, updates=600))
    assert rec.set_policy(bundle)
    return TestClient(create_app(ServeContext(rec))), bundle


def phi(bundle, catalog, items):
    rows = [catalog.index[i] for i in items]
    return bundle.fmap.transform(None, np.zeros(catalog.embeddings.shape[1]), USER,
                                 adapted_items=bundle.fmap.adapt(catalog.embeddings[rows]))


def ask(client, candidates, k=5, explain=True):
    body = {"user_id": "explained", "user": USER, "candidates": candidates, "k": k}
    if explain:
        body["explain"] = True
    r = client.post("/recommend", content=json.dumps(body))
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("algorithm", ["hybrid_linucb", "linucb"])
def test_the_parts_sum_to_the_score_and_match_the_closed_forms(ml_catalog, algorithm):
    settings = Settings().replace(bandit={"algorithm": algorithm, "alpha": 0.7})
    # Exposure control on and warmed up, so its adjustment is a real, non-zero part.
    client, bundle = serve(ml_catalog, settings, exposure=0.05)
    cands = ml_catalog.ids[:60]
    for _ in range(20):
        ask(client, cands, explain=False)
    body = ask(client, cands)
    parts = body["explanations"]
    assert [e["item"] for e in parts] == body["items"]
    assert [e["score"] for e in parts] == body["scores"]
    assert [e["propensity"] for e in parts] == body["propensities"]
    policy, X = bundle.policy, phi(bundle, ml_catalog, body["items"])
    ids = body["items"] if policy.uses_item_ids else None
    mean = policy.predict(X, ids) if ids else policy.predict(X)
    width = policy.widths(X, ids) if ids else policy.widths(X)
    for j, e in enumerate(parts):
        total = (e["content"] + e["item_own"] + e["exploration"] + e["exposure"]
                 + e["recently_shown"])
        assert total == pytest.approx(e["score"], abs=1e-9)
        assert sum(b["value"] for b in e["content_blocks"]) == pytest.approx(e["content"],
                                                                           abs=1e-9)
        assert e["content"] + e["item_own"] == pytest.approx(mean[j], abs=1e-9)
        assert e["exploration"] == pytest.approx(0.7 * width[j], rel=1e-9)
        sizes = [abs(b["value"]) for b in e["content_blocks"]]
        assert sizes == sorted(sizes, reverse=True)
        assert {b["name"] for b in e["content_blocks"]} == {
            "item embedding", "user profile", "profile x item", "gender", "age", "bias"}
    assert any(e["exposure"] != 0 for e in parts)
    if algorithm == "linucb":
        assert all(e["item_own"] == pytest.approx(0, abs=1e-12) for e in parts)
        assert not any(e["item_has_own_terms"] for e in parts)
    else:  # 600 updates over 300 items: most shown items have terms of their own
        own = [e for e in parts if e["item_has_own_terms"]]
        assert own and any(abs(e["item_own"]) > 1e-6 for e in own)
        assert all(e["item_own"] == 0 for e in parts if not e["item_has_own_terms"])


def test_the_impression_discount_is_a_part_of_its_own(ml_catalog):
    from stream.core.recent import RecentImpressions

    settings = Settings().replace(bandit={"alpha": 0.7})
    client, bundle = serve(ml_catalog, settings, recent=RecentImpressions(0.25, ttl_s=600))
    cands = ml_catalog.ids[:6]
    first = ask(client, cands)
    second = ask(client, cands)  # one candidate left unshown: four shown ones come back
    again = [e for e in second["explanations"] if e["item"] in first["items"]]
    assert len(again) == 4 and all(e["recently_shown"] == -0.25 for e in again)
    X = phi(bundle, ml_catalog, second["items"])
    width = bundle.policy.widths(X, second["items"])
    for j, e in enumerate(second["explanations"]):
        total = (e["content"] + e["item_own"] + e["exploration"] + e["exposure"]
                 + e["recently_shown"])
        assert total == pytest.approx(e["score"], abs=1e-9)
        assert e["exploration"] == pytest.approx(0.7 * width[j], rel=1e-9)


def test_thompson_sampling_explains_its_draw(ml_catalog):
    settings = Settings().replace(bandit={"algorithm": "hybrid_ts"})
    client, bundle = serve(ml_catalog, settings)
    body = ask(client, ml_catalog.ids[:40], k=3)
    X = phi(bundle, ml_catalog, body["items"])
    mean = bundle.policy.predict(X, body["items"])
    for j, e in enumerate(body["explanations"]):
        assert e["exposure"] == 0
        assert e["score"] - e["exploration"] == pytest.approx(mean[j], abs=1e-9)
        assert e["content"] + e["item_own"] + e["exploration"] == pytest.approx(e["score"])


def test_off_it_costs_nothing_and_changes_nothing(ml_catalog, monkeypatch):
    client, _ = serve(ml_catalog, Settings())
    calls = []
    real = recommender_module.explain_slate

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(recommender_module, "explain_slate", counted)
    plain = ask(client, ml_catalog.ids[:30], explain=False)
    assert "explanations" not in plain and calls == []
    explained = ask(client, ml_catalog.ids[:30])
    assert calls == [1] and len(explained["explanations"]) == 5
    # Same user, same candidates, a policy that draws nothing: the same slate either way.
    assert explained["items"] == plain["items"] and explained["scores"] == plain["scores"]
