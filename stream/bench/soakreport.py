"""The soak's figures (:mod:`stream.bench.soak`): slopes and growth after warm-up, the
targets, and the plot.

>>> s = summarize([{"t_s": t, "lag": 0.0, "procs": {"worker": {"rss_bytes": 2**20 * (100 + t),
...                "fds": 9, "threads": 3, "cpu_s": 0.0}}} for t in range(0, 301, 60)], 60)
>>> round(s["worker"]["rss_mb_per_min"], 6), s["worker"]["fds_per_min"]
(60.0, 0.0)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stream.bench.procstats import slope_per_minute

__all__ = ["JUDGED", "RSS_GROWTH_TARGET_PCT", "plot", "summarize", "targets"]

#: Processes whose RSS growth the target applies to (the broker and the driver are not ours
#: to judge, but are reported).
JUDGED = ("worker", "fetch", "server")
RSS_GROWTH_TARGET_PCT = 5.0


def _window_median(samples: list[dict[str, Any]], lo: float, hi: float, get) -> float:
    v = [get(s) for s in samples if lo <= s["t_s"] <= hi]
    return float(np.median(v)) if v else float("nan")


def summarize(samples: list[dict[str, Any]], warmup_s: float) -> dict[str, Any]:
    """Per process after ``warmup_s``: slopes per minute of RSS (MB), fds and threads, CPU
    %, RSS growth % (median over the first vs the last window of ``min(60 s, span / 4)``);
    the same slope and level figures for the consumer lag."""
    after = [s for s in samples if s["t_s"] >= warmup_s]
    if len(after) < 2:
        raise ValueError(f"{len(after)} samples after warm-up; need at least 2")
    t = [s["t_s"] for s in after]
    span = t[-1] - t[0]
    w = min(60.0, span / 4)
    out: dict[str, Any] = {"after_warmup_s": span, "samples": len(after), "window_s": w}
    for name in after[0]["procs"]:
        def get(s, key, name=name):
            return s["procs"][name][key]
        rss0 = _window_median(after, t[0], t[0] + w, lambda s, g=get: g(s, "rss_bytes"))
        rss1 = _window_median(after, t[-1] - w, t[-1], lambda s, g=get: g(s, "rss_bytes"))
        cpu = (get(after[-1], "cpu_s") - get(after[0], "cpu_s")) / span if span > 0 else 0.0
        out[name] = {
            "rss_mb_start": rss0 / 2**20, "rss_mb_end": rss1 / 2**20,
            "rss_growth_pct": 100.0 * (rss1 - rss0) / rss0,
            "rss_mb_per_min": slope_per_minute(t, [get(s, "rss_bytes") / 2**20 for s in after]),
            "fds_per_min": slope_per_minute(t, [get(s, "fds") for s in after]),
            "threads_per_min": slope_per_minute(t, [get(s, "threads") for s in after]),
            "fds_range": [min(get(s, "fds") for s in after), max(get(s, "fds") for s in after)],
            "threads_range": [min(get(s, "threads") for s in after),
                              max(get(s, "threads") for s in after)],
            "cpu_pct": 100.0 * cpu,
        }
    lt = [(s["t_s"], s["lag"]) for s in after if s["lag"] is not None]
    lag = np.array([v for _, v in lt], dtype=np.float64)
    out["lag"] = {"per_min": slope_per_minute([a for a, _ in lt], lag) if len(lt) > 1
                  else float("nan"),
                  "mean": float(lag.mean()) if len(lag) else None,
                  "p50": float(np.median(lag)) if len(lag) else None,
                  "max": float(lag.max()) if len(lag) else None}
    return out


def targets(report: dict[str, Any]) -> dict[str, Any]:
    """RSS growth < 5 % for the worker, its fetch process and the server; lag flat: over the
    span after warm-up its fitted change is under one second of produced events."""
    s = report["summary"]
    growth = {n: s[n]["rss_growth_pct"] for n in JUDGED}
    lag_change = abs(s["lag"]["per_min"]) * s["after_warmup_s"] / 60
    return {"rss_growth_pct": growth,
            "rss_growth_met": all(g < RSS_GROWTH_TARGET_PCT for g in growth.values()),
            "lag_fitted_change": lag_change,
            "lag_flat": bool(lag_change < report["event_rate"])}


def plot(samples: list[dict[str, Any]], warmup_min: float, path: Path) -> None:
    """RSS, fds, threads, CPU % per process and the worker's lag against minutes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([s["t_s"] for s in samples]) / 60
    fig, axes = plt.subplots(5, 1, figsize=(8, 12), sharex=True, dpi=110)
    names = list(samples[0]["procs"])
    for name in names:
        p = [s["procs"][name] for s in samples]
        axes[0].plot(t, [x["rss_bytes"] / 2**20 for x in p], label=name)
        axes[1].plot(t, [x["fds"] for x in p], label=name)
        axes[2].plot(t, [x["threads"] for x in p], label=name)
        cpu = np.diff([x["cpu_s"] for x in p]) / np.maximum(np.diff(t * 60), 1e-9)
        axes[3].plot(t[1:], 100 * cpu, label=name, lw=0.8)
    axes[4].plot(t, [np.nan if s["lag"] is None else s["lag"] for s in samples], color="k")
    for ax, label in zip(axes, ("RSS (MB)", "open fds", "threads", "CPU (% of a core)",
                                "worker lag (messages)"), strict=True):
        ax.set_ylabel(label)
        ax.axvline(warmup_min, color="grey", ls="--", lw=0.8)
        ax.grid(alpha=0.3)
    axes[0].legend(ncol=len(names), fontsize=8)
    axes[0].set_title("fairstream bench soak (dashed: end of warm-up)")
    axes[-1].set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
