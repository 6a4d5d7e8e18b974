"""``fairstream experiment report NAME``: the per-arm table and a PNG over time.

Reads what the worker published (:meth:`~stream.experiments.results.ExperimentResults.to_dict`,
key ``results:<name>`` on the experiments topic) and the configuration in force; prints
one row per arm (share, impressions, mean reward, the difference with control and its
always-valid interval, the always-valid p-value, exposure disparity, status) and draws
reward difference (with its interval) and disparity per arm against time.

>>> print(format_table([{"arm": "control", "control": True, "share": 0.5, "impressions": 10,
...     "reward": 0.5, "diff": float("nan"), "lower": float("nan"), "upper": float("nan"),
...     "p_value": float("nan"), "disparity": 0.1, "status": "running"}]).splitlines()[2])
control*   0.500        10  0.5000         —                    —        —   0.1000  running
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["format_groups", "format_table", "write_plot"]

_HEAD = (f"{'arm':<9} {'share':>6} {'impr.':>9} {'reward':>7} {'diff':>9} "
         f"{'interval':>20} {'p':>8} {'dispar.':>8}  status")


def _f(x: float, spec: str) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The table, one line per arm (control marked ``*``)."""
    lines = [_HEAD, "-" * len(_HEAD)]
    for r in rows:
        name = r["arm"] + ("*" if r["control"] else "")
        interval = ("—" if r["control"] or not math.isfinite(r["lower"])
                    else f"[{r['lower']:+.4f}, {r['upper']:+.4f}]")
        lines.append(f"{name:<9} {r['share']:>6.3f} {r['impressions']:>9d} "
                     f"{_f(r['reward'], '.4f'):>7} {_f(r['diff'], '+.4f'):>9} "
                     f"{interval:>20} {_f(r['p_value'], '.4f'):>8} "
                     f"{_f(r['disparity'], '.4f'):>8}  {r['status']}")
    return "\n".join(lines)


def format_groups(results: dict[str, Any]) -> list[str]:
    """Per arm: mean reward per user group, and exposure share per item group."""
    lines = []
    for arm, r in results["arms"].items():
        rewards = ", ".join(f"{g} {total / n:.4f} ({n:.0f})"
                            for g, (n, total, _sq) in r["by_user_group"].items() if n)
        exposure_total = sum(r["exposure"].values())
        shares = ", ".join(f"{g} {e / exposure_total:.3f}" for g, e in r["exposure"].items()) \
            if exposure_total else "—"
        lines.append(f"{arm}: reward by user group: {rewards or '—'}")
        lines.append(f"{arm}: exposure share by item group: {shares}")
    return lines


def write_plot(results: dict[str, Any], path: Path) -> Path:
    """Reward difference with control (always-valid interval shaded) and disparity per
    arm, against time since the first point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = results.get("history", [])
    fig, (ax_r, ax_d) = plt.subplots(1, 2, figsize=(13, 5))
    t0 = history[0]["ts"] if history else 0.0
    arms = sorted({a for p in history for a in p["arms"]})
    for arm in arms:
        pts = [(p["ts"] - t0, p["arms"][arm]) for p in history if arm in p["arms"]]
        t = [x for x, _ in pts]
        diff = [v["diff"] if v["diff"] is not None else math.nan for _, v in pts]
        lo = [v["lower"] if v["lower"] is not None else math.nan for _, v in pts]
        hi = [v["upper"] if v["upper"] is not None else math.nan for _, v in pts]
        if any(math.isfinite(d) for d in diff):
            line, = ax_r.plot(t, diff, label=arm)
            finite = [(a, b, c) for a, b, c in zip(t, lo, hi, strict=True)
                      if math.isfinite(b) and math.isfinite(c)]
            if finite:
                ax_r.fill_between([a for a, _, _ in finite], [b for _, b, _ in finite],
                                  [c for _, _, c in finite], alpha=0.2, color=line.get_color())
        disp = [v["disparity"] if v["disparity"] is not None else math.nan for _, v in pts]
        ax_d.plot(t, disp, label=arm)
    ax_r.axhline(0.0, color="black", linewidth=0.8)
    ax_r.set(title=f"{results['experiment']}: reward minus control "
                   f"(always-valid {1 - results['alpha']:.0%} interval)",
             xlabel="seconds since the first result", ylabel="mean reward per impression")
    target = results.get("disparity_target")
    if target is not None and math.isfinite(target):
        ax_d.axhline(target, color="red", linestyle="--", linewidth=0.8, label="target")
    ax_d.set(title="Exposure/merit disparity per arm", xlabel="seconds since the first result",
             ylabel="disparity")
    for ax in (ax_r, ax_d):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
