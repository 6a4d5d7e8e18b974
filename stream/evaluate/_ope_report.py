"""report.md and ope.png for :func:`stream.evaluate.ope.run_eval_ope`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ESTIMATORS = ("ipw", "snipw", "dr")


def write_report(results: dict[str, Any], path: Path) -> None:
    s = results["setup"]
    lines = [
        "# Off-policy evaluation on the Open Bandit Dataset sample",
        "",
        f"Uniform-random log, {s['rows']} rows: policies trained on the first "
        f"{s['train_rows']}, evaluated on the last {s['eval_rows']} "
        f"({s['eval_contexts']} distinct contexts). Formulation: {s['formulation']}. "
        f"Reward model (DR): {s['reward_model']}. Intervals: {s['ci']}, "
        f"B = {s['bootstrap']}, seed {s['seed']}.",
        "",
        "Estimand: expected click per shown slot (CTR).",
        "",
        "| policy | IPW [95% CI] | SNIPW [95% CI] | DR [95% CI] | rows with w > 0 |",
        "|---|---|---|---|---|",
    ]
    for row in results["ope"].values():
        cells = [f"{row[e]['estimate']:.5f} [{row[e]['ci_low']:.5f}, {row[e]['ci_high']:.5f}]"
                 for e in ESTIMATORS]
        lines.append(f"| {row['label']} | {' | '.join(cells)} | {row['matched_rows']} |")
    lo, hi = results["reference_bts_ci"]
    lines += [
        f"| **reference: logged BernoulliTS (on-policy mean click)** | "
        f"{results['reference_bts_ctr']:.5f} [{lo:.5f}, {hi:.5f}] | | | |",
        "",
        f"Mean click of the evaluation half of the random log: "
        f"{results['random_log_eval_ctr']:.5f}.",
        "",
    ]
    path.write_text("\n".join(lines))


def plot_ope(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(results["ope"])
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(names) + 2), 4.2), dpi=120)
    width = 0.25
    x = np.arange(len(names))
    for j, est in enumerate(ESTIMATORS):
        rows = [results["ope"][n][est] for n in names]
        y = np.array([r["estimate"] for r in rows])
        err = np.array([[r["estimate"] - r["ci_low"] for r in rows],
                        [r["ci_high"] - r["estimate"] for r in rows]])
        ax.errorbar(x + (j - 1) * width, y, yerr=np.maximum(err, 0), fmt="o", capsize=3,
                    label=est.upper())
    ref = results["reference_bts_ctr"]
    lo, hi = results["reference_bts_ci"]
    ax.axhline(ref, color="k", ls="--", lw=1, label=f"logged BernoulliTS CTR {ref:.4f}")
    ax.axhspan(lo, hi, color="k", alpha=0.07)
    ax.set_xticks(x, [results["ope"][n]["label"] for n in names], rotation=20, ha="right",
                  fontsize=8)
    ax.set_ylabel("estimated CTR (95% bootstrap CI)")
    ax.set_title("Off-policy evaluation, Open Bandit Dataset sample (random log)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
