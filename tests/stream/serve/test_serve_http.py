"""The HTTP contract, in-process (Starlette TestClient): validation, admin auth, metrics."""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from stream.metrics import ServeMetrics
from stream.serve import (
    PolicyFollower,
    Recommender,
    ServeContext,
    create_app,
)
from stream.settings import ServeSettings, Settings
from tests.stream.serve.conftest import make_bundle, open_bundle

pytestmark = pytest.mark.model

TOKEN = "s3cret"


@pytest.fixture(scope="module")
def served(ml_catalog):
    settings = Settings().replace(bandit={"epsilon": 0.2})
    serve = ServeSettings(max_candidates=50, max_body_bytes=8192, admin_token=TOKEN)
    metrics = ServeMetrics()
    rec = Recommender(seed=0, max_candidates=serve.max_candidates)
    rec.set_catalog(ml_catalog.ids, ml_catalog.embeddings)
    follower = PolicyFollower(settings, rec, metrics)  # fed directly, no consumer
    good = [make_bundle(settings, ml_catalog, v) for v in (1, 2)]
    assert follower.handle(settings.kafka.group_id.encode(), good[0])
    assert follower.handle(settings.kafka.group_id.encode(), good[1])
    ctx = ServeContext(rec, serve, metrics, reload=follower.request_reload, pin=follower.pin)
    return TestClient(create_app(ctx)), ml_catalog, metrics, follower, settings, good


def post(client, path, obj=None, raw=None, **kw):
    return client.post(path, content=raw if raw is not None else json.dumps(obj), **kw)


def test_recommend_returns_a_ranked_slate_with_propensities(served):
    client, catalog, *_ = served
    cands = catalog.ids[:20]
    r = post(client, "/recommend", {"user_id": "u1", "user": {"gender": "F", "age": 31},
                                    "candidates": cands, "k": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["items"]) == 4 and set(body["items"]) <= set(cands)
    assert len(set(body["items"])) == 4
    assert all(0 < p <= 1 for p in body["propensities"]) and len(body["scores"]) == 4
    assert body["policy_version"] == "2" and body["request_id"]
    # Default candidates: the whole catalog; default k: bandit.slate_size.
    r = post(client, "/recommend", {"user_id": "u2"})
    assert r.status_code == 200 and len(r.json()["items"]) == 5


@pytest.mark.parametrize(("raw", "status", "reason"), [
    (b'{"user_id": "u1", ', 400, "malformed_json"),
    (b'[1, 2]', 400, "invalid_field"),
    (b'{"user_id": ""}', 400, "invalid_field"),
    (b'{"user_id": "u1", "k": "five"}', 400, "invalid_field"),
    (b'{"user_id": "u1", "extra": 1}', 400, "invalid_field"),
    (b'{"user_id": "u1", "k": 0}', 400, "invalid_k"),
    (b'{"user_id": "u1", "k": 51}', 400, "invalid_k"),
    (b'{"user_id": "u1", "candidates": ["1", "2"], "k": 3}', 400, "invalid_k"),
    (b'{"user_id": "u1", "candidates": ["1", "no-such-item"]}', 400, "unknown_item"),
    (b'{"user_id": "u1", "candidates": ["1", "1", "2"], "k": 1}', 400, "duplicate_candidate"),
    (json.dumps({"user_id": "u", "candidates": [str(i) for i in range(1, 60)]}).encode(),
     400, "too_many_candidates"),
    (b'{"user_id": "u1", "pad": "' + b"x" * 9000 + b'"}', 413, "body_too_large"),
    (b'{"user_id": "u\xff1"}', 400, "malformed_json"),  # not UTF-8: was a 500
])
def test_invalid_recommend_requests_get_4xx_with_a_reason(served, raw, status, reason):
    client, _, metrics, *_ = served
    before = metrics.registry.get_sample_value("fairstream_serve_invalid_requests_total",
                                               {"reason": reason})
    r = post(client, "/recommend", raw=raw)
    assert r.status_code == status, r.text
    assert r.json()["error"] == reason and r.json()["detail"]
    after = metrics.registry.get_sample_value("fairstream_serve_invalid_requests_total",
                                              {"reason": reason})
    assert after == before + 1


def test_feedback_is_validated_before_it_is_queued(served):
    client, catalog, *_ = served
    ok = {"type": "click", "user_id": "u1", "request_id": "r1", "item_id": catalog.ids[0]}
    assert post(client, "/feedback", {**ok, "item_id": "nope"}).json()["error"] == "unknown_item"
    r = post(client, "/feedback", {**ok, "type": "purchase"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_field"
    r = post(client, "/feedback", {**ok, "ts": -1.0})
    assert r.status_code == 400 and r.json()["error"] == "invalid_field"
    # Far ahead of the server's clock: it would hold its partition's watermark hostage.
    r = post(client, "/feedback", {**ok, "ts": 1e12})
    assert r.status_code == 400 and r.json()["error"] == "clock_skew"
    r = post(client, "/feedback", raw=b'{"type": "click", "user_id": "u\xff1"}')
    assert r.status_code == 400 and r.json()["error"] == "malformed_json"  # was a plain 500
    # Valid, but this context has no event log: refused with 503, never a 500.
    r = post(client, "/feedback", ok)
    assert r.status_code == 503 and r.json()["error"] == "queue_full"


def test_admin_endpoints_need_the_token(served):
    client, _, _, follower, settings, _good = served
    assert post(client, "/admin/reload", {}).status_code == 401
    r = post(client, "/admin/reload", {}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = post(client, "/admin/pin", {"version": 1}, headers=auth)
    assert r.status_code == 200 and r.json()["policy_version"] == 1
    rec = post(client, "/recommend", {"user_id": "u1"}).json()
    assert rec["policy_version"] == "1"
    # Pinned: a newer verified bundle is kept but not served.
    follower.handle(settings.kafka.group_id.encode(), make_bundle(settings, served[1], 3))
    assert post(client, "/recommend", {"user_id": "u1"}).json()["policy_version"] == "1"
    assert post(client, "/admin/pin", {"version": 99}, headers=auth).status_code == 404
    r = post(client, "/admin/pin", {"version": None}, headers=auth)
    assert r.json()["policy_version"] == 3
    assert post(client, "/admin/reload", {}, headers=auth).status_code == 202


def test_admin_is_disabled_without_a_configured_token(ml_catalog):
    client = TestClient(create_app(ServeContext(Recommender())))
    r = post(client, "/admin/reload", {}, headers={"Authorization": "Bearer x"})
    assert r.status_code == 403 and r.json()["error"] == "admin_disabled"


def test_an_unexpected_failure_is_a_logged_500_and_the_server_keeps_answering(caplog):
    class Broken(Recommender):
        def recommend(self, *args, **kwargs):
            raise RuntimeError("boom")

    metrics = ServeMetrics()
    client = TestClient(create_app(ServeContext(Broken(), metrics=metrics)))
    r = post(client, "/recommend", {"user_id": "u1"})
    assert r.status_code == 500 and r.json()["error"] == "internal_error"
    assert "boom" in caplog.text
    assert metrics.registry.get_sample_value(
        "fairstream_serve_requests_total", {"endpoint": "recommend", "code": "500"}) == 1
    assert client.get("/healthz").status_code == 200


def test_tampered_bundle_is_rejected_and_the_old_one_keeps_serving(served):
    client, catalog, metrics, follower, settings, _ = served
    serving = follower.recommender.bundle.version
    data = bytearray(make_bundle(settings, catalog, serving + 10))
    data[len(data) // 2] ^= 0x01
    assert not follower.handle(settings.kafka.group_id.encode(), bytes(data))
    assert metrics.registry.get_sample_value("fairstream_serve_policy_rejected_total",
                                             {"reason": "checksum"}) >= 1
    assert follower.recommender.bundle.version == serving
    # Signed with another key: a valid checksum, a failed signature.
    other = settings.replace(policy={"signing_key": "not-ours"})
    assert not follower.handle(settings.kafka.group_id.encode(),
                               make_bundle(other, catalog, serving + 11))
    assert metrics.registry.get_sample_value("fairstream_serve_policy_rejected_total",
                                             {"reason": "signature"}) == 1
    assert open_bundle(settings, make_bundle(settings, catalog, 1)).version == 1
    assert post(client, "/recommend", {"user_id": "u"}).json()["policy_version"] == str(serving)


def test_health_routes_and_metrics(served):
    client, *_ = served
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    assert client.get("/recommend").status_code == 405
    text = client.get("/metrics").text
    assert 'fairstream_serve_requests_total{code="200",endpoint="recommend"}' in text
    assert "fairstream_serve_request_duration_seconds_bucket" in text
    assert "fairstream_serve_policy_version" in text
    assert 'fairstream_serve_policy_rejected_total{reason="signature"}' in text
