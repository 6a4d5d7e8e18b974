"""Equal-budget tuning before `fairstream eval sim`: the same protocol for ours and the peers.

Every tuned family (fairstream's and VW's alike) gets the same number of
configurations and the same single tuning stream: candidates drawn with
:data:`TUNE_SEED` (no reported seed uses it) over the first ``tune_events``
arrivals (the first quarter of the stream by default, before the midpoint, so
no held-back item is seen either). The configuration with the highest mean
reward wins. A fairstream configuration is a dict merged into the policy's
hyper-parameters; a VW configuration is option text appended to its options.
"""

from __future__ import annotations

import copy
import dataclasses
import multiprocessing as mp
from typing import Any

import numpy as np

from stream.evaluate.simulation import EvalWorld, draw_stream, run_seed

__all__ = ["TUNE_SEED", "apply_config", "tune"]

TUNE_SEED = 1000


def apply_config(family: str, config: Any, hyper: dict[str, Any],
                 vw_configs: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """``(hyper, vw_configs)`` with one family's configuration applied (inputs untouched)."""
    hyper, vw_configs = copy.deepcopy(hyper), dict(vw_configs)
    if family.startswith("vw"):
        if not isinstance(config, str):
            raise TypeError(f"a VW configuration is option text, got {config!r}")
        vw_configs[family] = f"{vw_configs[family]} {config}".strip()
    else:
        if not isinstance(config, dict):
            raise TypeError(f"a fairstream configuration is a dict, got {config!r}")
        hyper[family] = {**hyper[family], **config}
    return hyper, vw_configs


def _head(world: EvalWorld, n: int) -> EvalWorld:
    return dataclasses.replace(world, arrival_user=world.arrival_user[:n],
                               profiles=world.profiles[:n], hist_len=world.hist_len[:n])


_HEAD: EvalWorld | None = None


def _family_means(job: tuple) -> list[float]:
    family, grid, hyper, vw_configs, k, n_candidates, seed = job
    from stream.evaluate.peers import close_all
    from stream.evaluate.suite import make_agent

    assert _HEAD is not None
    stream = draw_stream(_HEAD, seed, n_candidates)
    agents = []
    for j, config in enumerate(grid):
        h, v = apply_config(family, config, hyper, vw_configs)
        agent = make_agent(family, _HEAD, seed, h, v)
        agent.name = f"{family}#{j}"
        agents.append(agent)
    out = run_seed(_HEAD, stream, agents, k, progress=False)
    close_all(agents)
    T = _HEAD.n_arrivals
    return [float(out["runs"][a.name].reward.sum() / (T * k)) for a in agents]


def tune(world: EvalWorld, grids: dict[str, list[Any]], hyper: dict[str, Any],
         vw_configs: dict[str, str], *, tune_events: int | None = None, k: int = 5,
         n_candidates: int = 20, seed: int = TUNE_SEED, workers: int = 1
         ) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    """Search every family's grid on the tuning stream; returns tuned hyper, VW options, log.

    The log maps each family to ``{"configs": [...], "mean_reward": [...],
    "best": config}`` plus the protocol (``seed``, ``events``). Families run in
    ``workers`` processes.
    """
    global _HEAD
    sizes = {f: len(g) for f, g in grids.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"tuning grids must have equal budgets, got sizes {sizes}")
    n = tune_events if tune_events is not None else max(world.n_arrivals // 4, 1)
    n = min(n, world.release_t or world.n_arrivals, world.n_arrivals)
    _HEAD = _head(world, n)
    jobs = [(f, g, hyper, vw_configs, k, n_candidates, seed) for f, g in grids.items()]
    if workers > 1 and len(jobs) > 1:
        with mp.get_context("fork").Pool(min(workers, len(jobs))) as pool:
            all_means = pool.map(_family_means, jobs)
    else:
        all_means = [_family_means(j) for j in jobs]
    log: dict[str, Any] = {"seed": seed, "events": n,
                           "configs_per_family": max(sizes.values(), default=0)}
    for (family, grid), means in zip(grids.items(), all_means, strict=True):
        best = grid[int(np.argmax(means))]
        hyper, vw_configs = apply_config(family, best, hyper, vw_configs)
        log[family] = {"configs": list(grid), "mean_reward": means, "best": best}
    if "linucb" in grids and "neural_linear" in hyper:
        best = log["linucb"]["best"]
        hyper["neural_linear"] = {**hyper["neural_linear"],
                                  **{key: best[key] for key in ("alpha", "lam") if key in best}}
    return hyper, vw_configs, log
