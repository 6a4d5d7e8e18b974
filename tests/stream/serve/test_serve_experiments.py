"""Online experiments in serving, in-process: arms, sticky assignment, exact propensities,
the admin API's changes and refusals (the configuration in force stays)."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
from starlette.testclient import TestClient

from stream.events import EventCodec, compact
from stream.experiments import Arm, Experiment
from stream.metrics import ServeMetrics
from stream.serve import PolicyFollower, Recommender, ServeContext, create_app
from stream.serve.experiments import ExperimentControl
from stream.serve.impressions import EventLog
from stream.settings import ServeSettings, Settings
from tests.stream.serve.conftest import make_bundle

pytestmark = pytest.mark.model

TOKEN = "t0ken"
AUTH = {"authorization": f"Bearer {TOKEN}"}
EXPERIMENT = {"name": "alpha-ab", "arms": [
    {"name": "control", "share": 0.5},
    {"name": "wide", "share": 0.3, "alpha": 5.0},
    {"name": "pinned", "share": 0.2, "version": 1}]}


@pytest.fixture
def served(ml_catalog):
    settings = Settings().replace(bandit={"algorithm": "linucb", "alpha": 0.0})
    serve = ServeSettings(max_candidates=300, admin_token=TOKEN)
    metrics = ServeMetrics()
    sent = []
    log = EventLog(lambda topic, key, value, kind: sent.append(value), topic="t",
                   metrics=metrics)
    rec = Recommender(seed=0, max_candidates=serve.max_candidates,
                      impressions=log.log_impression)
    rec.set_catalog(ml_catalog.ids, ml_catalog.embeddings)
    follower = PolicyFollower(settings, rec, metrics)
    for v in (1, 2):
        assert follower.handle(settings.kafka.group_id.encode(),
                               make_bundle(settings, ml_catalog, v, updates=300 * v))
    rec.kept = follower.kept
    control = ExperimentControl(rec, metrics)
    ctx = ServeContext(rec, serve, metrics, event_log=log, experiments=control)
    return TestClient(create_app(ctx)), rec, control, metrics, log, sent


def _post(client, path, obj):
    return client.post(path, content=msgspec.json.encode(obj), headers=AUTH)


def test_arms_serve_their_own_policy_and_impressions_carry_the_arm(served):
    client, rec, _control, metrics, log, sent = served
    r = _post(client, "/admin/experiment", EXPERIMENT)
    assert r.status_code == 200, r.text
    assert r.json()["experiment"]["version"] == 1
    assert metrics.registry.get_sample_value(
        "fairstream_serve_experiment_share", {"experiment": "alpha-ab", "arm": "wide"}) == 0.3
    seen = {}
    for n in range(300):
        body = client.post("/recommend", content=msgspec.json.encode(
            {"user_id": f"u{n}", "k": 5})).json()
        seen.setdefault(body["arm"], []).append(body)
        again = client.post("/recommend", content=msgspec.json.encode(
            {"user_id": f"u{n}", "k": 5})).json()
        assert again["arm"] == body["arm"]  # sticky
    assert set(seen) == {"control", "wide", "pinned"}
    assert {b["policy_version"] for b in seen["pinned"]} == {"1"}
    assert {b["policy_version"] for b in seen["control"] + seen["wide"]} == {"2"}
    # The arm's own scores: control is LinUCB at α = 0, the wide arm at α = 5 (same
    # statistics): its scores are the control's plus 5·width, so larger.
    policy = rec.bundle.policy
    assert policy.alpha == 0.0
    ctl, wide = seen["control"][0], seen["wide"][0]
    assert max(wide["scores"]) > max(ctl["scores"])
    log.start().close()
    codec = EventCodec()
    impressions = [codec.decode(v) for v in sent]
    assert len(impressions) == 600
    arms = {(e.experiment, e.arm) for e in impressions}
    assert arms == {("alpha-ab", a) for a in ("control", "wide", "pinned")}
    assert all(compact(e).arm == e.arm for e in impressions)


def test_propensities_are_the_arm_policys(served, ml_catalog):
    _client, rec, control, *_ = served
    control.create(Experiment(name="ts-ab", arms=[
        Arm(name="control", share=0.5), Arm(name="eps", share=0.5, alpha=2.0)]))
    cands = ml_catalog.ids[:20]
    for n in range(40):
        user = f"p{n}"
        got = rec.recommend(user, {}, cands, 5, request_id=f"r{n}")
        arm = rec.split.router.arm(user)
        assert got.arm == arm
        bundle, policy, table, _ = rec.split.resolve(arm, rec.bundle, rec._view.table,
                                                     rec._view.emb, rec.kept)
        X = bundle.fmap.transform(None, rec.profiles.get(user), {},
                                  adapted_items=table[[rec._view.index[c] for c in cands]])
        again = policy.select(X, 5, rng=np.random.default_rng(0))
        assert [cands[i] for i in again.indices.tolist()] == got.items
        assert again.propensities.tolist() == got.propensities


def test_an_arm_serves_the_linear_policy_by_thompson_sampling(served, ml_catalog):
    """The served policy is LinUCB: an arm with ``exploration = "ts"`` serves linear
    Thompson sampling over the same ridge model (its posterior mean is LinUCB's θ, at
    the server's ``bandit.v``), with its own Monte Carlo propensities; the control arm
    stays LinUCB. Back to ``"ucb"`` at another α: the closed form θᵀx + α·width."""
    from bandits import LinearTS, LinUCB

    _client, rec, control, *_ = served
    rec.thompson_v = 0.25
    control.create(Experiment(name="algo-ab", arms=[
        Arm(name="control", share=0.5), Arm(name="ts", share=0.5, exploration="ts")]))
    served_policy = rec.bundle.policy
    assert isinstance(served_policy, LinUCB)
    _b, ts, table, _ = rec.split.resolve("ts", rec.bundle, rec._view.table, rec._view.emb,
                                         rec.kept)
    assert isinstance(ts, LinearTS) and ts.v == 0.25
    np.testing.assert_array_equal(ts.theta, served_policy.theta)
    _b, ctl, _t, _ = rec.split.resolve("control", rec.bundle, rec._view.table, rec._view.emb,
                                       rec.kept)
    assert ctl is served_policy
    cands = ml_catalog.ids[:30]
    users = [f"t{n}" for n in range(200)]
    got = {u: rec.recommend(u, {}, cands, 5, request_id=f"q{u}") for u in users}
    by_arm = {a: [g for u, g in got.items() if rec.split.router.arm(u) == a]
              for a in ("control", "ts")}
    assert by_arm["control"] and by_arm["ts"]
    assert all(g.arm == "ts" and len(g.propensities) == 5 for g in by_arm["ts"])
    assert any(p < 1.0 for g in by_arm["ts"] for p in g.propensities)  # sampled, not argmax
    # LinUCB's propensities are those of its deterministic top-k (ε = 0): 1 each.
    assert all(p == 1.0 for g in by_arm["control"] for p in g.propensities)

    control.rollback("next experiment")
    control.create(Experiment(name="algo-ab2", arms=[
        Arm(name="control", share=0.5), Arm(name="ucb", share=0.5, exploration="ucb",
                                             alpha=3.0)]))
    _b, ucb, table, _ = rec.split.resolve("ucb", rec.bundle, rec._view.table, rec._view.emb,
                                          rec.kept)
    X = rec.bundle.fmap.transform(None, rec.profiles.get("t0"), {}, adapted_items=table[:10])
    np.testing.assert_allclose(ucb.score(X), X @ served_policy.theta
                               + 3.0 * served_policy.widths(X), rtol=1e-12)


@pytest.mark.parametrize("body, reason", [
    ({**EXPERIMENT, "arms": [{"name": "control", "share": 0.5},
                             {"name": "b", "share": 0.4}]}, "invalid_shares"),
    ({**EXPERIMENT, "arms": [{"name": "control", "share": 0.5},
                             {"name": "control", "share": 0.5}]}, "duplicate_arm"),
    ({**EXPERIMENT, "control": "nope"}, "unknown_arm"),
    ({**EXPERIMENT, "arms": [{"name": "control", "share": 1.0, "alpha": -1.0}]},
     "invalid_arm"),
    ({**EXPERIMENT, "name": "Bad Name"}, "invalid_name"),
    ({**EXPERIMENT, "arms": [{"name": "control", "share": 0.5},
                             {"name": "b", "share": 0.5, "version": 99}]}, "unknown_version"),
])
def test_bad_experiments_are_refused_and_nothing_changes(served, body, reason):
    client, rec, control, _metrics, *_ = served
    assert _post(client, "/admin/experiment", EXPERIMENT).status_code == 200
    assert _post(client, "/admin/experiment/rollback", {}).status_code == 200
    before = control.current
    r = _post(client, "/admin/experiment", body)
    assert r.status_code in (400, 404), r.text
    assert r.json()["error"] == reason
    assert control.current == before and rec.split.experiment == before


def test_changes_are_versioned_and_bad_ones_refused(served):
    client, rec, control, metrics, *_ = served
    assert client.get("/admin/experiment").status_code == 401
    assert client.get("/admin/experiment", headers=AUTH).json() == {"experiment": None}
    r = _post(client, "/admin/experiment/stop", {"arm": "wide"})
    assert (r.status_code, r.json()["error"]) == (409, "no_experiment")
    assert _post(client, "/admin/experiment", EXPERIMENT).status_code == 200
    # a duplicate name, or a second experiment while one runs
    r = _post(client, "/admin/experiment", EXPERIMENT)
    assert (r.status_code, r.json()["error"]) == (409, "duplicate_experiment")
    r = _post(client, "/admin/experiment", {**EXPERIMENT, "name": "other"})
    assert (r.status_code, r.json()["error"]) == (409, "experiment_running")
    v1 = control.current
    for path, body, reason in [
            ("/admin/experiment/stop", {"arm": "nope"}, "unknown_arm"),
            ("/admin/experiment/promote", {"arm": "nope"}, "unknown_arm"),
            ("/admin/experiment/shares", {"shares": {"control": 0.5, "wide": 0.5,
                                                      "pinned": 0.5}}, "invalid_shares"),
            ("/admin/experiment/shares", {"shares": {"control": 1.0}}, "invalid_shares"),
            ("/admin/experiment/shares", {"shares": {"control": 0.5, "wide": 0.3,
                                                      "nope": 0.2}}, "unknown_arm")]:
        r = _post(client, path, body)
        assert (r.status_code, r.json()["error"]) == (400, reason), (path, r.text)
        assert control.current is v1
    r = _post(client, "/admin/experiment/stop", {"arm": "wide", "reason": "looks bad"})
    assert r.json()["experiment"]["version"] == 2
    assert control.current.shares() == {"control": 0.8, "wide": 0.0, "pinned": 0.2}
    assert metrics.registry.get_sample_value(
        "fairstream_serve_experiment_share", {"experiment": "alpha-ab", "arm": "wide"}) == 0
    assert all(rec.split.router.arm(f"u{n}") != "wide" for n in range(500))
    r = _post(client, "/admin/experiment/promote", {"arm": "pinned"})
    assert r.json()["experiment"]["status"] == "promoted"
    assert control.current.version == 3
    assert {rec.split.router.arm(f"u{n}") for n in range(200)} == {"pinned"}
    r = _post(client, "/admin/experiment/rollback", {})
    assert (r.status_code, r.json()["error"]) == (409, "no_experiment")
    assert metrics.registry.get_sample_value(
        "fairstream_serve_experiment_changes_total", {"by": "admin"}) == 3
