"""Off-policy estimators against synthetic logs whose true policy value is known,
and the Open Bandit Dataset run on a small slice."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stream.evaluate.ope import (
    dr,
    estimate_policy_value,
    importance_weights,
    ipw,
    run_eval_ope,
    snipw,
)

N_CTX, N_ACT = 20, 5


def _world(seed: int = 0):
    """Finite context set (uniform), Bernoulli rewards q(x, a), a softmax evaluation policy."""
    rng = np.random.default_rng(seed)
    q = rng.uniform(0.05, 0.6, size=(N_CTX, N_ACT))
    logits = 3.0 * rng.normal(size=(N_CTX, N_ACT))
    pi = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    true_value = float(np.mean((pi * q).sum(axis=1)))  # contexts are uniform: exact
    return q, pi, true_value


def _log(q, pi, n, rng):
    """n rows logged by the uniform policy (p = 1/N_ACT) with the estimator inputs."""
    x = rng.integers(0, N_CTX, size=n)
    a = rng.integers(0, N_ACT, size=n)
    r = (rng.random(n) < q[x, a]).astype(np.float64)
    p = np.full(n, 1.0 / N_ACT)
    w = importance_weights(pi[x][:, :, None], a, np.zeros(n, dtype=int), p)
    return x, a, r, w


def test_estimators_cover_the_known_value():
    q, pi, value = _world()
    rng = np.random.default_rng(1)
    x, a, r, w = _log(q, pi, 4000, rng)
    qhat = q + rng.normal(0, 0.05, size=q.shape)  # a decent, imperfect reward model
    est = estimate_policy_value(r, w, qhat[x, a], (pi[x] * qhat[x]).sum(axis=1),
                                bootstrap=500, rng=2)
    assert set(est) == {"ipw", "snipw", "dr"}
    for name, e in est.items():
        assert e.ci_low <= value <= e.ci_high, (name, e, value)
        assert e.ci_low <= e.estimate <= e.ci_high


def test_estimators_are_unbiased_over_repeated_logs():
    q, pi, value = _world(3)
    rng = np.random.default_rng(4)
    runs = {"ipw": [], "snipw": [], "dr": []}
    for _ in range(300):
        x, a, r, w = _log(q, pi, 500, rng)
        runs["ipw"].append(ipw(r, w))
        runs["snipw"].append(snipw(r, w))
        runs["dr"].append(dr(r, w, q[x, a], (pi[x] * q[x]).sum(axis=1)))
    for name, values in runs.items():
        v = np.array(values)
        se = v.std(ddof=1) / np.sqrt(len(v))
        # SNIPW is only asymptotically unbiased; its O(1/n) bias is far below 4 SE here.
        assert abs(v.mean() - value) < 4 * se, (name, v.mean(), value, se)


def test_dr_with_a_perfect_reward_model_has_lower_variance_than_ipw():
    q, pi, _ = _world(5)
    rng = np.random.default_rng(6)
    ipws, drs = [], []
    for _ in range(200):
        x, a, r, w = _log(q, pi, 400, rng)
        ipws.append(ipw(r, w))
        drs.append(dr(r, w, q[x, a], (pi[x] * q[x]).sum(axis=1)))
    assert np.var(drs) < np.var(ipws)
    # and its bootstrap interval is narrower on one log
    x, a, r, w = _log(q, pi, 2000, rng)
    est = estimate_policy_value(r, w, q[x, a], (pi[x] * q[x]).sum(axis=1), bootstrap=300, rng=0)
    width = {k: e.ci_high - e.ci_low for k, e in est.items()}
    assert width["dr"] < width["ipw"]


def test_snipw_equals_ipw_when_weights_average_to_one():
    rng = np.random.default_rng(7)
    w = rng.exponential(size=1000)
    w /= w.mean()
    r = (rng.random(1000) < 0.3).astype(np.float64)
    assert snipw(r, w) == pytest.approx(ipw(r, w), rel=1e-12)
    est = estimate_policy_value(r, w, bootstrap=50, rng=0)
    assert est["snipw"].estimate == pytest.approx(est["ipw"].estimate, rel=1e-12)


def test_bootstrap_is_seeded_and_inputs_are_validated():
    r, w = np.array([0.0, 1.0, 1.0, 0.0, 1.0]), np.array([1.0, 2.0, 0.5, 0.0, 1.5])
    a = estimate_policy_value(r, w, bootstrap=100, rng=3)
    b = estimate_policy_value(r, w, bootstrap=100, rng=3)
    assert a == b
    with pytest.raises(ValueError, match="weight"):
        ipw(r, w[:3])
    with pytest.raises(ValueError, match="non-finite"):
        snipw(r, np.array([1.0, np.nan, 1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="action_dist"):
        importance_weights(np.ones((2, 3)), np.zeros(2, int), np.zeros(2, int), np.ones(2))


def test_run_eval_ope_on_a_small_slice(data_cache, tmp_path):
    json_path = tmp_path / "ope.json"
    out = run_eval_ope(data_cache, tmp_path / "out", json_path=json_path, bootstrap=50,
                       seed=0, progress=False, max_rows=1200)
    names = {"linucb", "ts", "egreedy", "popular", "random", "vw"}
    assert set(out["ope"]) == names
    for row in out["ope"].values():
        for est in ("ipw", "snipw", "dr"):
            e = row[est]
            assert set(e) == {"estimate", "ci_low", "ci_high"}
            assert e["ci_low"] <= e["estimate"] <= e["ci_high"]
    # The uniform-random policy is the logging policy: every weight is 1, IPW = mean click.
    rnd = out["ope"]["random"]
    assert rnd["mean_weight"] == pytest.approx(1.0)
    assert rnd["ipw"]["estimate"] == pytest.approx(out["random_log_eval_ctr"])
    assert 0.0 <= out["reference_bts_ctr"] <= 1.0
    assert json.loads(json_path.read_text()) == json.loads(
        (tmp_path / "out" / "results.json").read_text())
    assert (tmp_path / "out" / "report.md").read_text().count("|") > 20
    assert (tmp_path / "out" / "ope.png").stat().st_size > 1000
