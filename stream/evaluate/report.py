"""report.md of `fairstream eval sim`: headline table, targets with measured values, peers."""

from __future__ import annotations

from typing import Any

from stream.evaluate.suite import is_peer

__all__ = ["cold_start_cell", "format_table", "render_report"]


def _pm(p: dict[str, Any], key: str, fmt: str = ".4f") -> str:
    return f"{p[key]:{fmt}} ± {p.get(key + '_std', 0.0):{fmt}}"


def cold_start_cell(p: dict[str, Any]) -> tuple[str, str, str]:
    """(first-20 reward, impressions to first click, clicked/censored/unshown) as text."""
    c = p.get("cold_start")
    if not c:
        return "–", "–", "–"
    counts = "; ".join(f"{a}/{b}/{u}" for a, b, u in zip(
        c["clicked_per_seed"], c["censored_per_seed"], c["unshown_per_seed"], strict=True))
    return _pm(c, "first_n_reward", ".3f"), _pm(c, "first_click_mean", ".2f"), counts


def format_table(results: dict[str, Any]) -> str:
    """The headline table (markdown, sorted by mean reward), with the cold-start figures."""
    pol = results["policies"]
    lines = ["| policy | kind | mean reward | regret | tail exposure share | new items: reward "
             "over first 20 impressions | new items: impressions to first click | new items "
             "clicked/censored/unshown per seed |",
             "|---|---|---|---|---|---|---|---|"]
    for name in sorted(pol, key=lambda n: -pol[n]["mean_reward"]):
        p = pol[name]
        c20, first, counts = cold_start_cell(p)
        lines.append(f"| {name} | {'peer' if is_peer(name) else 'fairstream'} "
                     f"| {_pm(p, 'mean_reward')} | {p['regret']:.0f} "
                     f"| {p['tail_exposure_share']:.3f} | {c20} | {first} | {counts} |")
    return "\n".join(lines)


def render_report(results: dict[str, Any]) -> str:
    cfg, pol, tg = results["config"], results["policies"], results["targets"]
    lines = [
        "# fairstream eval sim — MovieLens-100K closed-loop replay",
        "",
        f"{cfg['events']} arrivals in timestamp order, {len(cfg['seeds'])} seeds "
        f"{cfg['seeds']}, slate k={cfg['k']} of {cfg['n_candidates']} candidates drawn from "
        f"items the user really rated (reward = rating ≥ 4). Features: frozen MiniLM "
        f"embeddings → PCA adapter → φ(user, item) at d={cfg['dim']} (profiles from the "
        f"logged history), identical for every policy. Mean ± std over seeds. "
        f"Wall time {results['wall_seconds']:.0f} s.",
        "",
        "## Headline (sorted by mean reward)",
        "",
        "| policy | kind | mean reward | 2nd-half reward | regret | tail exposure share | "
        "tail exp. disparity | exposure/merit disparity | s/seed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = sorted(pol, key=lambda n: -pol[n]["mean_reward"])
    for name in order:
        p = pol[name]
        lines.append(
            f"| {name} | {'peer' if is_peer(name) else 'fairstream'} | {_pm(p, 'mean_reward')} "
            f"| {p['second_half_mean_reward']:.4f} | {_pm(p, 'regret', '.0f')} "
            f"| {_pm(p, 'tail_exposure_share', '.3f')} "
            f"| {_pm(p, 'tail_exposure_disparity', '.3f')} "
            f"| {_pm(p, 'exposure_disparity', '.3f')} | {p['seconds']:.0f} |")
    any_p = pol[order[0]]
    lines += [
        "",
        f"Tail items (bottom 80 % by rating count) are {any_p['tail_candidate_share']:.3f} of "
        f"the candidates and earn {any_p['tail_merit_share']:.3f} of the candidates' rewards "
        "(their merit share). *Tail exposure disparity* = |tail exposure share − tail share "
        "among candidates| (the target's metric; |… − tail merit share| is in results.json as "
        "tail_merit_disparity); *exposure/merit disparity* = FairnessTracker's "
        "½Σ_g|e_g − m_g| over shown items (merit = earned reward).",
        "",
        "## Targets",
        "",
    ]
    bp = tg.get("fairstream_vs_best_peer")
    if bp:
        lines.append(
            f"- fairstream's best policy ≥ 1.05 × the best peer (random excluded): "
            f"**{'met' if bp['met'] else 'missed'}** — {bp['fairstream_best']} "
            f"{bp['fairstream_reward']:.4f} vs {bp['peer_best']} {bp['peer_reward']:.4f} "
            f"(ratio {bp['ratio']:.3f}).")
    cs = tg.get("cold_start")
    if cs:
        lines.append(
            f"- Cold start: reward over new items' first 20 impressions of fairstream's best "
            f"policy ≥ every peer's: **{'met' if cs['met'] else 'missed'}** — "
            f"{cs['fairstream_best']} {cs['fairstream_best_cold']:.3f} vs {cs['peer_best_cold']} "
            f"{cs['peer_cold']:.3f} (best fairstream policy on this figure: "
            f"{cs['fairstream_best_cold_policy']} {cs['fairstream_cold_max']:.3f}).")
    vw = tg["fairstream_vs_vw"]
    lines.append(
        f"- fairstream's best policy ≥ best Vowpal Wabbit configuration (mean reward): "
        f"**{'met' if vw['met'] else 'missed'}** — {vw['fairstream_best']} "
        f"{vw['fairstream_reward']:.4f} vs {vw['vw_best']} {vw['vw_reward']:.4f} "
        f"({vw['difference']:+.4f}, {100 * vw['relative']:+.1f} %).")
    op = tg["exposure_controller"]
    lines.append(
        f"- Exposure controller cuts tail-exposure disparity by ≥ 50 % for ≤ 2 % relative "
        f"reward loss ({op['policy']}): **{'met' if op['met'] else 'missed'}** — best λ = "
        f"{op['lam']:g}: disparity {op['baseline_tail_exposure_disparity']:.4f} → "
        f"{op['tail_exposure_disparity']:.4f} ({100 * op['disparity_cut']:.0f} % cut) for "
        f"{100 * op['relative_reward_loss']:.2f} % reward loss.")
    nl = results["neural_vs_fixed_second_half"]
    lines.append(
        f"- NeuralLinear beats fixed-projection LinUCB on the second half of the stream "
        f"(same seeds): **{'met' if nl['met'] else 'missed'}** — "
        f"{nl['neural_linear']:.4f} vs {nl['linucb']:.4f} ({nl['difference']:+.4f}; per seed "
        f"{', '.join(f'{d:+.4f}' for d in nl['per_seed_difference'])}).")
    rv = tg.get("river_best")
    if rv:
        lines.append(
            f"- For the record: the best peer overall is {tg['best_overall']} "
            f"({pol[tg['best_overall']]['mean_reward']:.4f}); the best river policy is "
            f"{rv} ({pol[rv]['mean_reward']:.4f}).")
    cold_any = next((p["cold_start"] for p in pol.values() if "cold_start" in p), None)
    if cold_any:
        cands = "/".join(str(c) for c in cold_any["new_candidates_per_seed"])
        lines += ["", "## Cold start (items held back until mid-stream)", "",
                  f"{cold_any['new_items_per_seed'][0]} new items; {cands} of them (per seed) "
                  "were a candidate at least once after the midpoint, so the rest count as "
                  "unshown for every policy.", "",
                  format_table(results), "",
                  "Reward over first 20 impressions: pooled over the new items' first 20 "
                  "impressions in this policy's slates. Impressions to first click: mean over "
                  "the new items this policy got a click on; the clicked/censored/unshown "
                  "counts say how many new items that mean leaves out (censored = shown, never "
                  "clicked; unshown = never shown by this policy)."]
    tuning = results.get("tuning") or {}
    fams = [f for f in tuning if isinstance(tuning[f], dict)]
    if fams:
        lines += ["", "## Tuning (equal budget, tuning stream only)", "",
                  "| family | configurations (mean reward on the tuning stream) | chosen |",
                  "|---|---|---|"]
        for f in fams:
            t = tuning[f]
            tried = "; ".join(f"`{c}` {m:.4f}" for c, m in zip(t["configs"], t["mean_reward"],
                                                                strict=True))
            lines.append(f"| {f} | {tried} | `{t['best']}` |")
    target = results["config"].get("exposure_target", "merit")
    lines += ["", f"## Trade-off (exposure controller strength λ, target {target!r})", "",
              "| λ | mean reward | tail exposure disparity | tail exposure share |",
              "|---|---|---|---|"]
    for p in results["tradeoff"]:
        lines.append(f"| {p['lam']:g} | {p['mean_reward']:.4f} ± {p['mean_reward_std']:.4f} "
                     f"| {p['tail_exposure_disparity']:.4f} | {p['tail_exposure_share']:.3f} |")
    lines += ["", "## Reward per user group", ""]
    groups = sorted({g for p in pol.values() for g in p["reward_by_user_group"]})
    lines.append("| policy | " + " | ".join(groups) + " |")
    lines.append("|---|" + "---|" * len(groups))
    for name in order:
        g = pol[name]["reward_by_user_group"]
        lines.append(f"| {name} | " + " | ".join(f"{g.get(x, float('nan')):.3f}"
                                                 for x in groups) + " |")
    lines += ["", "## How each policy was configured", ""]
    for name in order:
        lines.append(f"- `{name}`: {pol[name]['description']}")
    lines += ["", "## Notes", ""] + [f"- {n}" for n in results.get("notes", [])]
    lines += ["", "Plots: reward_regret.png, reward_by_group.png, tail_exposure.png, "
              "tradeoff.png.", ""]
    return "\n".join(lines)
