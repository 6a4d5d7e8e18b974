"""Fairness/reward trade-off: the exposure controller's strength λ against reward.

For one fairstream policy the sweep runs ``<base>_lam<λ>`` agents (the controller's
merit target) or ``<base>_clam<λ>`` agents (its candidates target, see
:class:`bandits.ExposureController`) in the same pass (λ = 0 is the policy
itself) and records, per λ, the seeds' mean reward
and tail-exposure disparity ``|tail exposure share − tail candidate share|``
(the tail's share among the candidates). The operating point is the λ with
the largest disparity cut whose relative reward loss stays within a budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["DEFAULT_LAMBDAS", "best_operating_point", "sweep_names", "tradeoff_points"]

DEFAULT_LAMBDAS = (0.0, 1e-05, 2e-05, 4e-05, 0.0001, 0.001, 0.01)


def sweep_names(base: str, lambdas: Sequence[float], target: str = "merit") -> list[str]:
    """Agent names of the sweep (λ = 0 maps to ``base`` itself).

    >>> sweep_names("hybrid_linucb", [0.0, 1e-05], target="candidates")
    ['hybrid_linucb', 'hybrid_linucb_clam1e-05']
    """
    tag = {"merit": "lam", "candidates": "clam"}[target]
    return [base if lam == 0 else f"{base}_{tag}{lam:g}" for lam in lambdas]


def tradeoff_points(base: str, lambdas: Sequence[float],
                    policies: dict[str, dict[str, Any]], target: str = "merit"
                    ) -> list[dict[str, Any]]:
    """One point per λ from the aggregated per-policy results."""
    out = []
    for lam, name in zip(lambdas, sweep_names(base, lambdas, target), strict=True):
        p = policies[name]
        out.append({"policy": base, "target": target, "lam": float(lam), "name": name,
                    "mean_reward": p["mean_reward"], "mean_reward_std": p["mean_reward_std"],
                    "tail_exposure_disparity": p["tail_exposure_disparity"],
                    "tail_exposure_disparity_std": p["tail_exposure_disparity_std"],
                    "tail_exposure_share": p["tail_exposure_share"],
                    "exposure_disparity": p["exposure_disparity"]})
    return out


def best_operating_point(points: list[dict[str, Any]], max_rel_loss: float = 0.02
                         ) -> dict[str, Any]:
    """The λ > 0 with the largest relative disparity cut among those losing ≤ ``max_rel_loss``.

    >>> pts = [{"lam": 0.0, "mean_reward": 0.8, "tail_exposure_disparity": 0.1},
    ...        {"lam": 0.1, "mean_reward": 0.79, "tail_exposure_disparity": 0.04},
    ...        {"lam": 1.0, "mean_reward": 0.6, "tail_exposure_disparity": 0.0}]
    >>> best_operating_point(pts)["lam"]
    0.1
    """
    base = next(p for p in points if p["lam"] == 0)
    r0, d0 = base["mean_reward"], base["tail_exposure_disparity"]
    best: dict[str, Any] = {"lam": 0.0, "relative_reward_loss": 0.0, "disparity_cut": 0.0,
                            "mean_reward": r0, "tail_exposure_disparity": d0,
                            "baseline_mean_reward": r0, "baseline_tail_exposure_disparity": d0}
    for p in points:
        if p["lam"] == 0:
            continue
        loss = (r0 - p["mean_reward"]) / r0 if r0 else 0.0
        cut = (d0 - p["tail_exposure_disparity"]) / d0 if d0 else 0.0
        if loss <= max_rel_loss and cut > best["disparity_cut"]:
            best = {**best, "lam": p["lam"], "relative_reward_loss": loss, "disparity_cut": cut,
                    "mean_reward": p["mean_reward"],
                    "tail_exposure_disparity": p["tail_exposure_disparity"]}
    return best
