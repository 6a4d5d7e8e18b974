"""PNG plots of `fairstream eval sim` (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_plots"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _style(name: str) -> dict[str, Any]:
    from stream.evaluate.suite import is_peer

    return {"linestyle": "--" if is_peer(name) else "-", "linewidth": 1.2 if is_peer(name) else 1.8}


def write_plots(out_dir: Path, curves: dict[str, dict[str, np.ndarray]],
                policies: dict[str, dict[str, Any]], tradeoff: list[dict[str, Any]],
                names: list[str]) -> list[Path]:
    """Write the four figures; ``curves[name]`` holds seed-mean cumulative series."""
    plt = _plt()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for name in names:
        c = curves[name]
        x = np.arange(1, c["cum_reward"].shape[0] + 1)
        axes[0].plot(x, c["cum_reward"], label=name, **_style(name))
        axes[1].plot(x, c["cum_regret"], label=name, **_style(name))
    axes[0].set(title="Cumulative reward (seed mean)", xlabel="arrival", ylabel="clicks")
    axes[1].set(title="Cumulative regret vs best slate of the candidates", xlabel="arrival",
                ylabel="regret")
    axes[1].legend(fontsize=7, ncol=2)
    paths.append(_save(plt, fig, out_dir / "reward_regret.png"))

    labels = sorted({g for n in names for g in policies[n]["reward_by_user_group"]})
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(labels) + 4), 5))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        vals = [policies[name]["reward_by_user_group"].get(g, np.nan) for g in labels]
        ax.bar(np.arange(len(labels)) + i * width, vals, width, label=name)
    ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels, rotation=30, ha="right")
    ax.set(title="Mean reward per user group", ylabel="reward per shown item")
    ax.legend(fontsize=7, ncol=3)
    paths.append(_save(plt, fig, out_dir / "reward_by_group.png"))

    fig, ax = plt.subplots(figsize=(8, 5))
    for name in names:
        c = curves[name]["tail_share"]
        ax.plot(np.arange(1, c.shape[0] + 1), c, label=name, **_style(name))
    if names:
        ax.axhline(policies[names[0]]["tail_merit_share"], color="k", linewidth=0.8,
                   linestyle=":", label="tail merit share (candidates)")
        ax.axhline(policies[names[0]]["tail_candidate_share"], color="grey", linewidth=0.8,
                   linestyle="-.", label="tail share of candidates")
    ax.set(title="Tail-item exposure share over time (cumulative)", xlabel="arrival",
           ylabel="position-weighted share")
    ax.legend(fontsize=7, ncol=2)
    paths.append(_save(plt, fig, out_dir / "tail_exposure.png"))

    fig, ax = plt.subplots(figsize=(7, 5))
    if tradeoff:
        d = [p["tail_exposure_disparity"] for p in tradeoff]
        r = [p["mean_reward"] for p in tradeoff]
        ax.errorbar(d, r, yerr=[p["mean_reward_std"] for p in tradeoff], marker="o")
        for p in tradeoff:
            ax.annotate(f"λ={p['lam']:g}", (p["tail_exposure_disparity"], p["mean_reward"]),
                        fontsize=8, xytext=(4, 4), textcoords="offset points")
        ax.set(title=f"Reward vs tail-exposure disparity ({tradeoff[0]['policy']}, "
                     f"target {tradeoff[0].get('target', 'merit')})")
    ax.set(xlabel="|tail exposure share − tail share among candidates|", ylabel="mean reward")
    paths.append(_save(plt, fig, out_dir / "tradeoff.png"))
    return paths
