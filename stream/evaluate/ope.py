"""Off-policy evaluation (``fairstream eval ope``): IPW, SNIPW and DR on logged bandit data.

Estimators of a policy's value V(π) = E_x Σ_a π(a | x) q(x, a) from rows
(x_i, a_i, r_i) logged with propensity p_i, weight ``w_i = π(a_i | x_i) / p_i``::

    IPW   = (1/n) Σ w_i r_i
    SNIPW = Σ w_i r_i / Σ w_i
    DR    = (1/n) Σ [ Σ_a π(a | x_i) q̂(x_i, a) + w_i (r_i − q̂(x_i, a_i)) ]

Confidence intervals are percentile bootstrap intervals over rows (seeded).

On the Open Bandit Dataset sample (:func:`run_eval_ope`) rows are (context,
item, position) triples logged by the uniform-random policy (p = 1/80 per
position). We use the standard OBP per-position formulation: the evaluation
policy gives a distribution over the 80 items for each of the 3 positions,
``π(a | x, pos)``, and the estimand is the expected click per shown slot —
the same quantity as the BernoulliTS log's mean click, the reference row.
Policies are trained on the first half of the random log (time order) and
evaluated on the second; features and reward model: see
:mod:`stream.evaluate._ope_data`.

Limits, stated plainly: the sample has 38 clicks in 10,000 rows, so every
estimate has a wide interval, and a deterministic policy matches the logged
item in only ~1/80 of the rows.

References
----------
Horvitz, Thompson (1952). Sampling without replacement from a finite universe. JASA.
Swaminathan, Joachims (2015). The self-normalized estimator for counterfactual learning. NIPS.
Dudík, Langford, Li (2011). Doubly robust policy evaluation and learning. ICML.
Saito, Aihara, Matsutani, Narita (2021). Open Bandit Dataset and Pipeline. NeurIPS D&B.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Estimate", "dr", "estimate_policy_value", "importance_weights", "ipw",
           "run_eval_ope", "snipw"]

ESTIMATORS = ("ipw", "snipw", "dr")
_BOOT_CHUNK = 1 << 22  # bootstrap indices held in memory at once


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap percentile interval.

    >>> Estimate(0.5, 0.4, 0.6)
    Estimate(estimate=0.5, ci_low=0.4, ci_high=0.6)
    """

    estimate: float
    ci_low: float
    ci_high: float


def _check(name: str, v: Any, n: int | None = None) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    if v.ndim != 1 or (n is not None and v.shape[0] != n):
        raise ValueError(f"{name} must be a 1-d array of length {n or 'n'}, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} contains non-finite values")
    return v


def ipw(reward: np.ndarray, weight: np.ndarray) -> float:
    """Inverse propensity weighting: mean of ``w·r``.

    >>> ipw(np.array([1.0, 0.0]), np.array([2.0, 0.0]))
    1.0
    """
    r = _check("reward", reward)
    return float(np.mean(_check("weight", weight, len(r)) * r))


def snipw(reward: np.ndarray, weight: np.ndarray) -> float:
    """Self-normalised IPW: ``Σ w·r / Σ w`` (0 when every weight is 0).

    >>> snipw(np.array([1.0, 0.0]), np.array([3.0, 1.0]))
    0.75
    """
    r = _check("reward", reward)
    w = _check("weight", weight, len(r))
    total = w.sum()
    return float((w * r).sum() / total) if total > 0 else 0.0


def dr(reward: np.ndarray, weight: np.ndarray, q_logged: np.ndarray,
       q_expected: np.ndarray) -> float:
    """Doubly robust: mean of ``Σ_a π q̂ + w (r − q̂(a_logged))``.

    >>> dr(np.array([1.0]), np.array([2.0]), np.array([0.5]), np.array([0.4]))
    1.4
    """
    r = _check("reward", reward)
    n = len(r)
    terms = _check("q_expected", q_expected, n) + _check("weight", weight, n) * (
        r - _check("q_logged", q_logged, n))
    return float(np.mean(terms))


def importance_weights(action_dist: np.ndarray, action: np.ndarray, position: np.ndarray,
                       pscore: np.ndarray) -> np.ndarray:
    """``w_i = π(a_i | x_i, pos_i) / p_i`` for action_dist of shape (n, n_actions, len_list).

    >>> importance_weights(np.full((2, 4, 1), 0.25), np.array([0, 3]), np.array([0, 0]),
    ...                    np.array([0.25, 0.5])).tolist()
    [1.0, 0.5]
    """
    action_dist = np.asarray(action_dist, dtype=np.float64)
    if action_dist.ndim != 3:
        raise ValueError(f"action_dist must be (n, n_actions, len_list), got {action_dist.shape}")
    n = action_dist.shape[0]
    pscore = _check("pscore", pscore, n)
    if np.any(pscore <= 0):
        raise ValueError("pscore must be > 0")
    return action_dist[np.arange(n), np.asarray(action), np.asarray(position)] / pscore


def estimate_policy_value(reward: np.ndarray, weight: np.ndarray,
                          q_logged: np.ndarray | None = None,
                          q_expected: np.ndarray | None = None, *, bootstrap: int = 1000,
                          alpha: float = 0.05,
                          rng: np.random.Generator | int | None = 0) -> dict[str, Estimate]:
    """IPW, SNIPW (and DR when the reward model terms are given) with bootstrap CIs.

    The same ``bootstrap`` resamples of the n rows serve every estimator; the
    interval is the (α/2, 1 − α/2) percentile of the resampled estimates.

    >>> r, w = np.array([0.0, 1.0, 0.0, 1.0]), np.ones(4)
    >>> est = estimate_policy_value(r, w, bootstrap=200, rng=0)
    >>> est["ipw"].estimate, est["snipw"].estimate, "dr" in est
    (0.5, 0.5, False)
    """
    r = _check("reward", reward)
    n = len(r)
    w = _check("weight", weight, n)
    if bootstrap < 1:
        raise ValueError(f"bootstrap must be >= 1, got {bootstrap}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    wr = w * r
    terms = None
    if q_logged is not None and q_expected is not None:
        terms = _check("q_expected", q_expected, n) + w * (r - _check("q_logged", q_logged, n))
    boot = {name: np.empty(bootstrap) for name in ESTIMATORS}
    step = max(1, _BOOT_CHUNK // max(n, 1))
    for start in range(0, bootstrap, step):
        b = min(step, bootstrap - start)
        idx = rng.integers(0, n, size=(b, n))
        sw, swr = w[idx].sum(axis=1), wr[idx].sum(axis=1)
        boot["ipw"][start:start + b] = swr / n
        boot["snipw"][start:start + b] = np.divide(swr, sw, out=np.zeros(b), where=sw > 0)
        if terms is not None:
            boot["dr"][start:start + b] = terms[idx].mean(axis=1)
    point = {"ipw": ipw(r, w), "snipw": snipw(r, w)}
    if terms is not None:
        point["dr"] = float(terms.mean())
    lo, hi = 100 * alpha / 2, 100 * (1 - alpha / 2)
    return {name: Estimate(value, float(np.percentile(boot[name], lo)),
                           float(np.percentile(boot[name], hi)))
            for name, value in point.items()}


# -- the Open Bandit Dataset run ---------------------------------------------------------------

def run_eval_ope(cache_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                 json_path: str | os.PathLike[str] | None = None, bootstrap: int = 1000,
                 seed: int = 0, progress: bool = True, *, max_rows: int | None = None,
                 policies: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Evaluate fairstream's policies off-policy on the OBD sample (see module docstring).

    Writes ``results.json``, ``report.md`` and ``ope.png`` to ``out_dir`` (and
    the results to ``json_path`` too when given); returns the results.
    ``max_rows`` keeps the first rows of each log (quick runs); ``policies``
    picks a subset of :data:`~stream.evaluate._ope_policies.POLICY_NAMES`.
    """
    from stream.data import load_open_bandit
    from stream.evaluate._ope_data import (
        N_POSITIONS,
        OBDFeatures,
        RidgeRewardModel,
        distinct_contexts,
        load_item_context,
    )
    from stream.evaluate._ope_policies import (
        LABELS,
        POLICY_NAMES,
        VWPolicy,
        action_distributions,
        train_policies,
    )
    from stream.evaluate._ope_report import plot_ope, write_report

    started = time.perf_counter()
    names = tuple(policies or POLICY_NAMES)
    unknown = sorted(set(names) - set(POLICY_NAMES))
    if unknown:
        raise ValueError(f"unknown policies {unknown}; known: {list(POLICY_NAMES)}")

    def say(msg: str) -> None:
        if progress:
            print(f"[ope {time.perf_counter() - started:6.1f}s] {msg}", flush=True)

    log, bts = load_open_bandit(cache_dir, "random"), load_open_bandit(cache_dir, "bts")
    items = load_item_context(cache_dir, "random")
    n_rows = len(log) if max_rows is None else min(max_rows, len(log))
    half = n_rows // 2
    train, test = np.arange(half), np.arange(half, n_rows)
    say(f"random log: {n_rows} rows ({int(log.click[:n_rows].sum())} clicks); "
        f"train {len(train)}, evaluate {len(test)}")

    feats = OBDFeatures(log.user_features[train], items)
    X_train = feats.rows(log.user_features[train], log.affinity[train], log.item_id[train])
    r_train = log.click[train].astype(np.float64)
    pos_train, pos_test = log.position[train] - 1, log.position[test] - 1
    reward_model = RidgeRewardModel(lam=1.0).fit(X_train, pos_train, r_train)
    trained = train_policies(names, X_train, r_train, log.item_id[train], seed)
    say(f"features: dim {feats.dim}; trained {sorted(trained)} on {len(train)} rows")

    ctx = distinct_contexts(log, test)
    dists = action_distributions(trained, feats, ctx, N_POSITIONS, seed)
    if "vw" in names:
        vw = VWPolicy(items.categorical, feats.item_numeric, epsilon=0.1, seed=seed)
        vw.learn(log.user_features[train], log.affinity[train], log.item_id[train], r_train,
                 log.propensity[train])
        dists["vw"] = vw.distribution(ctx, N_POSITIONS)
        vw.close()
    say(f"action distributions over {len(ctx.users)} distinct evaluation contexts")

    q_all = np.stack([
        np.stack([reward_model.predict(feats.all_items(ctx.users[c], ctx.affinity[c]),
                                       np.full(feats.n_items, pos))
                  for pos in range(N_POSITIONS)], axis=1)
        for c in range(len(ctx.users))])                                # (n_ctx, n_items, k)
    rc, a, r = ctx.row_context, log.item_id[test], log.click[test].astype(np.float64)
    q_logged = q_all[rc, a, pos_test]
    rng = np.random.default_rng(seed)
    results: dict[str, Any] = {}
    for name in names:
        dist = dists[name]
        w = importance_weights(dist[rc], a, pos_test, log.propensity[test])
        q_expected = np.einsum("na,na->n", dist[rc, :, pos_test], q_all[rc, :, pos_test])
        est = estimate_policy_value(r, w, q_logged, q_expected, bootstrap=bootstrap, rng=rng)
        results[name] = {"label": LABELS[name], "mean_weight": float(w.mean()),
                         "matched_rows": int((w > 0).sum()),
                         **{k: asdict(v) for k, v in est.items()}}
        say(f"{name:8s} " + "  ".join(f"{k} {v.estimate:.5f} [{v.ci_low:.5f}, {v.ci_high:.5f}]"
                                       for k, v in est.items()))
    bts_click = bts.click[: (len(bts) if max_rows is None else min(max_rows, len(bts)))]
    bts_ci = estimate_policy_value(bts_click.astype(np.float64), np.ones(len(bts_click)),
                                   bootstrap=bootstrap, rng=rng)["ipw"]
    out = {
        "ope": results,
        "reference_bts_ctr": float(bts_click.mean()),
        "reference_bts_ci": [bts_ci.ci_low, bts_ci.ci_high],
        "random_log_eval_ctr": float(r.mean()),
        "setup": {"rows": n_rows, "train_rows": len(train), "eval_rows": len(test),
                  "eval_contexts": len(ctx.users), "feature_dim": feats.dim,
                  "bootstrap": bootstrap, "ci": "95% percentile bootstrap over rows",
                  "seed": seed, "formulation": "per-position π(a|x,pos), p = 1/80",
                  "reward_model": "ridge λ=1 on [φ(x,a), onehot(pos)], clipped to [0,1]",
                  "elapsed_s": time.perf_counter() - started},
    }
    out_path = Path(out_dir)
    out_path.mkdir(parents=True, exist_ok=True)
    text = json.dumps(out, indent=2) + "\n"
    (out_path / "results.json").write_text(text)
    if json_path is not None:
        Path(json_path).write_text(text)
    write_report(out, out_path / "report.md")
    plot_ope(out, out_path / "ope.png")
    say(f"wrote {out_path / 'results.json'}, report.md, ope.png")
    return out
