"""`fairstream eval sim`: fairstream and its peers on the same MovieLens stream, same run.

:func:`run_eval_sim` builds the world once (embeddings from the encoder's
disk cache, PCA adapter, logged-history profiles), runs every seed (in
parallel processes when ``workers > 1``), aggregates mean ± std over seeds,
and writes ``results.json``, ``report.md`` and the PNG plots to ``out_dir``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stream.evaluate.simulation import EvalWorld, draw_stream, run_seed, summarize_run
from stream.evaluate.suite import (
    DEFAULT_PEERS,
    FAIRSTREAM,
    HYPER,
    TUNING_GRIDS,
    VW_CONFIGS,
    VW_SLATE_CONFIGS,
    is_peer,
    make_agents,
    split_fair,
)
from stream.evaluate.tradeoff import (
    DEFAULT_LAMBDAS,
    best_operating_point,
    sweep_names,
    tradeoff_points,
)

__all__ = ["describe", "load_world", "run_eval_sim", "run_worlds"]

_SCALARS = ("mean_reward", "regret", "second_half_mean_reward", "tail_exposure_share",
            "tail_candidate_share", "tail_merit_share", "tail_exposure_disparity",
            "tail_merit_disparity",
            "exposure_disparity")


def describe(name: str, hyper: dict[str, Any] = HYPER,
             vw_configs: dict[str, str] | None = None) -> str:
    """One line on how a roster entry is configured (for the report)."""
    vw_configs = VW_CONFIGS if vw_configs is None else vw_configs
    if name == "random":
        return "bandits.UniformRandom: a uniformly random slate."
    if name == "popular":
        return ("bandits.MostPopular: top-k by running click count per item id, learnt online "
                "from its own slates.")
    if name in vw_configs and name.startswith("vw_dense_phi"):
        return (f"vowpalwabbit.Workspace `--cb_explore_adf {vw_configs[name]}` on fairstream's "
                "dense φ blocks (not how VW users set it up; kept for comparison): shared "
                "namespace U = adapted profile + gender/age indicators, action namespace "
                "A = adapted item embedding; slate = k draws without replacement from VW's PMF "
                "(renormalised), each shown item learnt with label `0:-r:p` on its line.")
    if name in vw_configs:
        return (f"vowpalwabbit.Workspace `--cb_explore_adf {vw_configs[name]}` with sparse "
                "namespaces: shared u = user id, a = gender/age bucket/occupation, h = ids of "
                "the user's last 30 logged likes before the arrival; action i = item id, "
                "g = genres + release year + decade, t = title tokens; slate = k draws without "
                "replacement from VW's PMF (renormalised), each shown item learnt with label "
                "`0:-r:p` on its line.")
    if name in VW_SLATE_CONFIGS:
        return (f"vowpalwabbit `--ccb_explore_adf -q UA {VW_SLATE_CONFIGS[name]}` (VW's own "
                "slate reduction, one slot per position); same namespaces.")
    if name.startswith("river_"):
        kind = name.removeprefix("river_")
        what = {"eps": "EpsilonGreedy(ε=0.1)", "ucb": "UCB(δ=0.1)",
                "ts": "ThompsonSampling(Beta prior)"}[kind]
        return (f"river.bandit.{what}, context-free with one arm per item id; slate = k "
                "successive pulls over the candidates not yet chosen; update(arm, reward) "
                "for every shown item.")
    base, lam, target = split_fair(name, hyper)
    fair = f" + ExposureController(λ={lam:g}, target={target!r})" if lam > 0 else ""
    discount = ("; items shown to the user and not clicked lose serve.impression_discount "
                "of score, as the server does (stream.core.recent)")
    if base == "deployed":
        return (f"The worker's own LearningState (bandit.algorithm = hybrid_linucb, "
                f"{hyper['hybrid_linucb']}, item_context = attributes): φ from profiles it "
                f"learnt from its own clicks, LearningState.learn after every slate"
                f"{discount}{fair}.")
    if base == "deployed_published":
        return (f"As `deployed`, but slates come from the serving view the worker would have "
                f"published, refreshed every policy.publish_every_updates rows{discount}{fair}.")
    if base == "deployed_published_plain":
        return (f"As `deployed_published`, without the impression discount "
                f"(serve.impression_discount = 0){fair}.")
    if base == "hybrid_linucb":
        return (f"bandits.HybridLinUCB({hyper['hybrid_linucb']}, z = attribute one-hots + bias) "
                f"on the fixed PCA φ{fair}.")
    if base == "hybrid_ts":
        return (f"bandits.HybridTS({hyper['hybrid_ts']}, z = attribute one-hots + bias) "
                f"on the fixed PCA φ{fair}.")
    if base == "linucb":
        return f"bandits.LinUCB({hyper['linucb']}) on the fixed PCA φ{fair}."
    if base == "ts":
        return f"bandits.LinearTS({hyper['ts']}) on the fixed PCA φ{fair}."
    if base == "neural_linear":
        return (f"NeuralLinear: LinUCB over an adapter fine-tuned (FineTuner) on the replay "
                f"buffer, statistics refit in the new space ({hyper['neural_linear']}){fair}.")
    return name


def load_world(settings_or_cache_dir: Any, events: int, *, encoder: Any = None,
               dim: int = 64, seed: int = 0, holdout: float = 0.0, holdout_seed: int = 0,
               n_candidates: int = 20) -> EvalWorld:
    """MovieLens world from a :class:`Settings` or a data cache dir (embeddings cached)."""
    from learners import Encoder
    from stream import data
    from stream.evaluate.simulation import world_from_movielens
    from stream.kafka.producers import popularity_group
    from stream.settings import Settings

    if isinstance(settings_or_cache_dir, Settings):
        cache_dir = settings_or_cache_dir.data.cache_dir
        emb_dir = settings_or_cache_dir.embedding_cache_dir
        device = settings_or_cache_dir.model.device
        dim = settings_or_cache_dir.features.dim
    else:
        cache_dir = str(settings_or_cache_dir)
        emb_dir, device = Path(cache_dir) / "embeddings", "cpu"
    ml = data.load_movielens(cache_dir)
    enc = encoder if encoder is not None else Encoder(cache_dir=emb_dir, device=device)
    emb = enc.embed([ml.items.text(i) for i in range(len(ml.items))])
    return world_from_movielens(ml, emb, popularity_group(ml), events, dim=dim, seed=seed,
                                holdout=holdout, holdout_seed=holdout_seed,
                                min_pool=n_candidates)


_WORLD: EvalWorld | None = None


def _seed_job(args: tuple) -> dict[str, Any]:
    seed, names, k, n_candidates, hyper, vw_configs, progress, position = args
    import torch

    torch.set_num_threads(1)
    assert _WORLD is not None
    stream = draw_stream(_WORLD, seed, n_candidates)
    agents = make_agents(names, _WORLD, seed, hyper, vw_configs)
    out = run_seed(_WORLD, stream, agents, k, progress=progress, desc=f"eval sim seed {seed}",
                   position=position)
    from stream.evaluate.peers import close_all

    close_all(agents)
    summaries = {n: summarize_run(r, out) for n, r in out["runs"].items()}
    extra = {a.name: {"finetunes": a.finetunes} for a in agents if hasattr(a, "finetunes")}
    return {"seed": seed, "summaries": summaries, "extra": extra}


def run_worlds(world: EvalWorld, names: Sequence[str], seeds: Sequence[int], *, k: int = 5,
               n_candidates: int = 20, hyper: dict[str, Any] | None = None,
               vw_configs: dict[str, str] | None = None, workers: int = 1,
               progress: bool = True) -> list[dict[str, Any]]:
    """Per-seed summaries of every named agent (seeds run in ``workers`` processes)."""
    global _WORLD
    _WORLD = world
    jobs = [(s, list(names), k, n_candidates, hyper or HYPER, vw_configs or VW_CONFIGS,
             progress, i) for i, s in enumerate(seeds)]
    if workers > 1 and len(jobs) > 1:
        with mp.get_context("fork").Pool(min(workers, len(jobs))) as pool:
            return pool.map(_seed_job, jobs)
    return [_seed_job(j) for j in jobs]


def _aggregate_cold(cold: list[dict[str, Any]]) -> dict[str, Any]:
    """Seed means ± std of the cold-start figures, with the per-seed censoring counts."""
    out: dict[str, Any] = {"first_n": cold[0]["first_n"]}
    for key in ("first_n_reward", "first_click_mean"):
        vals = np.array([c[key] for c in cold], dtype=np.float64)
        ok = vals[~np.isnan(vals)]
        out[key] = float(ok.mean()) if ok.size else float("nan")
        out[key + "_std"] = float(ok.std(ddof=1)) if ok.size > 1 else 0.0
        out[key + "_per_seed"] = vals.tolist()
    for key in ("new_items", "new_candidates", "clicked", "censored", "unshown",
                "first_n_impressions", "impressions", "censored_impressions_mean"):
        out[key + "_per_seed"] = [c[key] for c in cold]
    return out


def _aggregate(per_seed: list[dict[str, Any]], names: Sequence[str],
               hyper: dict[str, Any],
               vw_configs: dict[str, str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    policies, curves = {}, {}
    for name in names:
        rows = [s["summaries"][name] for s in per_seed]
        p: dict[str, Any] = {"kind": "peer" if is_peer(name) else "fairstream",
                             "description": describe(name, hyper, vw_configs)}
        for key in _SCALARS:
            vals = np.array([r[key] for r in rows], dtype=np.float64)
            p[key] = float(vals.mean())
            p[key + "_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
            p[key + "_per_seed"] = vals.tolist()
        groups = sorted({g for r in rows for g in r["reward_by_user_group"]})
        p["reward_by_user_group"] = {
            g: float(np.mean([r["reward_by_user_group"].get(g, np.nan) for r in rows]))
            for g in groups}
        p["seconds"] = float(np.mean([r["seconds"] for r in rows]))
        fts = [s["extra"].get(name, {}).get("finetunes") for s in per_seed]
        if any(fts):
            p["finetunes_per_seed"] = len(fts[0] or [])
            p["finetune_loss"] = [[f["loss_before"], f["loss_after"]] for f in (fts[0] or [])]
        cold = [r["cold_start"] for r in rows if r.get("cold_start")]
        if cold:
            p["cold_start"] = _aggregate_cold(cold)
        policies[name] = p
        curves[name] = {c: np.mean([r["curves"][c] for r in rows], axis=0)
                        for c in ("cum_reward", "cum_regret", "tail_share")}
    return policies, curves


def run_eval_sim(settings_or_cache_dir: Any, events: int = 20_000, seeds: int = 3,
                 out_dir: str | Path = "runs/eval-sim", json_path: str | Path | None = None,
                 progress: bool = True, *, peers: Sequence[str] | None = None,
                 fairstream: Sequence[str] | None = None, tradeoff_policy: str = "hybrid_linucb",
                 lambdas: Sequence[float] = DEFAULT_LAMBDAS, exposure_target: str = "candidates",
                 k: int = 5,
                 n_candidates: int = 20, workers: int | None = None, encoder: Any = None,
                 hyper: dict[str, Any] | None = None, grids: dict[str, list[Any]] | None = None,
                 tune_events: int | None = None, holdout: float = 0.2,
                 holdout_seed: int = 0) -> dict[str, Any]:
    """Run the side-by-side simulation and write results.json, report.md and PNGs.

    ``settings_or_cache_dir``: a :class:`stream.settings.Settings` or a data cache
    directory. ``grids`` (default :data:`~stream.evaluate.suite.TUNING_GRIDS`; ``{}``
    for none) are searched first with :func:`stream.evaluate.tuning.tune`;
    ``holdout`` is the share of items held back until the midpoint (cold start).
    ``exposure_target`` is the controller target the λ sweep uses: "candidates", the
    default, pushes exposure toward the tail's share of the candidates, which is what
    the sweep's tail-exposure disparity measures; "merit" follows the policy's merit.
    Returns the results dict (also written to ``out_dir/results.json`` and, when
    given, ``json_path``).
    """
    from stream.evaluate.plots import write_plots
    from stream.evaluate.report import render_report
    from stream.evaluate.tuning import tune

    t_start = time.perf_counter()
    hyper = hyper or HYPER
    peers = list(DEFAULT_PEERS if peers is None else peers)
    fs = list(FAIRSTREAM if fairstream is None else fairstream)
    sweep = sweep_names(tradeoff_policy, lambdas, exposure_target) if lambdas else []
    names = list(dict.fromkeys(fs + [n for n in sweep if n not in fs] + peers))
    seed_list = list(range(seeds))
    if workers is None:
        workers = min(len(seed_list), max(1, (os.cpu_count() or 1)))
    world = load_world(settings_or_cache_dir, events, encoder=encoder, holdout=holdout,
                       holdout_seed=holdout_seed, n_candidates=n_candidates)
    grids = TUNING_GRIDS if grids is None else grids
    grids = {f: g for f, g in grids.items()
             if any(n == f or n.startswith(f + "_") for n in names)}
    vw_configs = dict(VW_CONFIGS)
    tuning: dict[str, Any] = {}
    if grids:
        t0 = time.perf_counter()
        hyper, vw_configs, tuning = tune(world, grids, hyper, vw_configs,
                                         tune_events=tune_events, k=k,
                                         n_candidates=n_candidates, workers=workers)
        tuning["seconds"] = time.perf_counter() - t0
    per_seed = run_worlds(world, names, seed_list, k=k, n_candidates=n_candidates, hyper=hyper,
                          vw_configs=vw_configs, workers=workers, progress=progress)
    policies, curves = _aggregate(per_seed, names, hyper, vw_configs)
    sweep_pts = (tradeoff_points(tradeoff_policy, lambdas, policies, exposure_target)
                 if sweep else [])

    fs_names = [n for n in names if not is_peer(n) and n in fs]
    fs_best = max(fs_names, key=lambda n: policies[n]["mean_reward"]) if fs_names else None
    vw_names = [n for n in names if n.startswith("vw") and not n.startswith("vw_dense_phi")]
    vw_best = max(vw_names, key=lambda n: policies[n]["mean_reward"]) if vw_names else None
    targets: dict[str, Any] = {}
    if fs_best and vw_best:
        a, b = policies[fs_best]["mean_reward"], policies[vw_best]["mean_reward"]
        targets["fairstream_vs_vw"] = {"fairstream_best": fs_best, "fairstream_reward": a,
                                       "vw_best": vw_best, "vw_reward": b, "difference": a - b,
                                       "relative": (a - b) / b if b else float("nan"),
                                       "met": bool(a >= b)}
    if sweep_pts:
        op = best_operating_point(sweep_pts, 0.02)
        targets["exposure_controller"] = {"policy": tradeoff_policy, **op,
                                          "met": bool(op["disparity_cut"] >= 0.5)}
    peer_names = [n for n in names if is_peer(n) and n != "random"]
    if fs_best and peer_names:
        pb = max(peer_names, key=lambda n: policies[n]["mean_reward"])
        a, b = policies[fs_best]["mean_reward"], policies[pb]["mean_reward"]
        targets["fairstream_vs_best_peer"] = {
            "fairstream_best": fs_best, "fairstream_reward": a, "peer_best": pb,
            "peer_reward": b, "ratio": a / b if b else float("nan"),
            "met": bool(a >= 1.05 * b)}
        cold = {n: policies[n]["cold_start"]["first_n_reward"] for n in names
                if "cold_start" in policies[n]}
        if fs_best in cold:
            fs_cold = max((n for n in fs_names if n in cold), key=lambda n: cold[n])
            peer_cold = {n: v for n, v in cold.items() if is_peer(n)}
            pc = max(peer_cold, key=lambda n: peer_cold[n]) if peer_cold else None
            targets["cold_start"] = {
                "fairstream_best": fs_best, "fairstream_best_cold": cold[fs_best],
                "fairstream_best_cold_policy": fs_cold, "fairstream_cold_max": cold[fs_cold],
                "peer_best_cold": pc, "peer_cold": peer_cold.get(pc, float("nan")),
                "met": bool(pc is None or cold[fs_best] >= peer_cold[pc])}
    river = [n for n in names if n.startswith("river")]
    if river:
        targets["river_best"] = max(river, key=lambda n: policies[n]["mean_reward"])
    targets["best_overall"] = max(names, key=lambda n: policies[n]["mean_reward"])
    nvf: dict[str, Any] = {}
    if "neural_linear" in policies and "linucb" in policies:
        a = policies["neural_linear"]["second_half_mean_reward_per_seed"]
        b = policies["linucb"]["second_half_mean_reward_per_seed"]
        d = [x - y for x, y in zip(a, b, strict=True)]
        nvf = {"neural_linear": float(np.mean(a)), "linucb": float(np.mean(b)),
               "difference": float(np.mean(d)), "per_seed_difference": d,
               "met": bool(np.mean(d) > 0), "seeds": seed_list}
    notes = [
        "Offline, in-process replay (no Kafka); every policy learns right after each arrival "
        "from its own slate only.",
        "Profiles = decayed mean of embeddings of items the user logged a rating ≥ 4 for "
        "before the arrival (policy-independent, so φ is identical for every policy).",
        f"Sweep policy: {tradeoff_policy} with ExposureController(target="
        f"{exposure_target!r}); best fairstream policy in this run: {fs_best}.",
        (f"Tuning (same protocol and budget for fairstream and VW): every tuned family "
         f"searched {tuning.get('configs_per_family', 0)} configurations on one tuning stream "
         f"(candidate seed {tuning.get('seed')}, not a reported seed; the first "
         f"{tuning.get('events')} arrivals); best mean reward wins. neural_linear takes "
         "linucb's tuned (α, λ); river, most-popular and vw_dense_phi_squarecb run as "
         "configured. Grids and scores: results.json `tuning`." if tuning else
         "No tuning in this run: every policy runs with the given settings."),
        (f"Cold start: {world.new_items.sum()} of {world.new_items.shape[0]} items "
         f"(holdout {holdout:g}, seed {holdout_seed}) are held back until arrival "
         f"{world.release_t} and count in no history before it; {world.skipped} early "
         "arrivals were skipped (their user had fewer than n_candidates other rated items). "
         "Per policy: pooled mean reward over each new item's first 20 impressions; mean "
         "impressions until the first click over the new items clicked at all (items shown "
         "but never clicked are censored and counted beside it)." if world.new_items.any()
         else "No cold-start hold-back in this run."),
        "LinearTS propensities use mc_samples Monte-Carlo draws (kept small: not needed "
        "for on-policy reward).",
    ]
    results: dict[str, Any] = {
        "config": {"events": world.n_arrivals, "seeds": seed_list, "k": k,
                   "n_candidates": n_candidates, "dim": world.dim, "lambdas": list(lambdas),
                   "exposure_target": exposure_target,
                   "tradeoff_policy": tradeoff_policy, "hyper": hyper,
                   "vw_configs": {n: f"--cb_explore_adf {a}" for n, a in vw_configs.items()
                                  if n in names},
                   "workers": workers, "feature_space": world.fmap.feature_space,
                   "holdout": holdout, "holdout_seed": holdout_seed,
                   "new_items": int(world.new_items.sum()), "release_t": world.release_t,
                   "skipped_arrivals": world.skipped},
        "tuning": tuning,
        "policies": policies,
        "tradeoff": sweep_pts,
        "targets": targets,
        "neural_vs_fixed_second_half": nvf,
        "notes": notes,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_names = [n for n in names if n not in sweep or n == tradeoff_policy]
    results["plots"] = [p.name for p in write_plots(out, curves, policies, sweep_pts,
                                                    plot_names)]
    results["wall_seconds"] = time.perf_counter() - t_start
    if "exposure_controller" in targets and "fairstream_vs_vw" in targets and nvf:
        (out / "report.md").write_text(render_report(results))
    else:
        (out / "report.md").write_text(_short_report(results))
    text = json.dumps(results, indent=2, default=float)
    (out / "results.json").write_text(text)
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(text)
    return results


def _short_report(results: dict[str, Any]) -> str:
    """A headline-only report for partial rosters (no VW, no sweep, ...)."""
    from stream.evaluate.report import format_table

    lines = ["# fairstream eval sim", "", "## Headline (sorted by mean reward)", "",
             format_table(results)]
    if results["tradeoff"]:
        op = results["targets"]["exposure_controller"]
        lines += ["", f"## Trade-off (target {results['config']['exposure_target']!r})", "",
                  "| λ | mean reward | tail exposure disparity | tail exposure share |",
                  "|---|---|---|---|"]
        lines += [f"| {p['lam']:g} | {p['mean_reward']:.4f} ± {p['mean_reward_std']:.4f} | "
                  f"{p['tail_exposure_disparity']:.4f} | {p['tail_exposure_share']:.3f} |"
                  for p in results["tradeoff"]]
        lines += ["", f"Best operating point within 2 % reward: λ = {op['lam']:g}, disparity "
                  f"cut {op['disparity_cut']:.1%}, reward loss {op['relative_reward_loss']:.2%} "
                  f"(target: cut ≥ 50 %, {'met' if op['met'] else 'not met'})."]
    return "\n".join(lines) + "\n"
