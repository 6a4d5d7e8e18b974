"""`fairstream bench bandits`: the policies' hot paths, each beside a naive numpy baseline.

For LinUCB at each d: single-row update p50, batched update throughput, and
scoring ``n_candidates`` rows (p50/p99), measured beside a naive
implementation in the same run — a ``np.linalg.solve`` per update and an
``np.linalg.inv`` per scoring call, which is what the incremental inverse
saves. For the hybrid policy (d = 64, bias-only z by default), the model is
filled with one row per item for each item count, then scored on random held
candidates, both by the learning policy and by its serving view (what
``fairstream serve`` scores with); bytes per item are the model's own count
(arrays at capacity plus the id map). BLAS runs on one thread, as in the worker. Timings are
wall-clock ``perf_counter_ns`` per call, so they include Python overhead and
whatever else the machine is running.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from bandits import HybridLinUCB, LinUCB

__all__ = ["run_bandits_bench"]

_UPDATES = 3000
_SCORES = 3000
_BATCH = 1000
_BATCHES = 40


def _us(samples: list[int], q: float) -> float:
    return round(float(np.percentile(np.asarray(samples) / 1e3, q)), 2)


def _timed(fn, args: Sequence[tuple]) -> list[int]:
    out = []
    for a in args:
        t0 = time.perf_counter_ns()
        fn(*a)
        out.append(time.perf_counter_ns() - t0)
    return out


def _linucb(d: int, n_candidates: int, rng: np.random.Generator) -> dict[str, float]:
    p = LinUCB(dim=d, alpha=1.0, feature_space="bench")
    p.update(rng.normal(size=(2 * d, d)), rng.normal(size=2 * d))
    X, r = rng.normal(size=(_UPDATES, d)), rng.normal(size=_UPDATES)
    update = _timed(p.update, [(X[i:i + 1], r[i:i + 1]) for i in range(_UPDATES)])
    Xb, rb = rng.normal(size=(_BATCHES, _BATCH, d)), rng.normal(size=(_BATCHES, _BATCH))
    t0 = time.perf_counter()
    for j in range(_BATCHES):
        p.update(Xb[j], rb[j])
    batch_rate = _BATCHES * _BATCH / (time.perf_counter() - t0)
    Qs = rng.normal(size=(16, n_candidates, d))
    score = _timed(p.score, [(Qs[i % 16],) for i in range(_SCORES)])

    # naive baseline: raw statistics, a solve per update and an inverse per scoring call
    A, b = np.eye(d), np.zeros(d)

    def naive_update(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        A[...] += np.outer(x[0], x[0])
        b[...] += y[0] * x[0]
        return np.linalg.solve(A, b)

    def naive_score(Q: np.ndarray) -> np.ndarray:
        A_inv = np.linalg.inv(A)
        return Q @ (A_inv @ b) + np.sqrt(np.einsum("ij,jk,ik->i", Q, A_inv, Q))

    naive_up = _timed(naive_update, [(X[i:i + 1], r[i:i + 1]) for i in range(_UPDATES)])
    naive_sc = _timed(naive_score, [(Qs[i % 16],) for i in range(_SCORES)])
    return {"update_us_p50": _us(update, 50), "batch_updates_per_s": round(batch_rate),
            "score100_us_p50": _us(score, 50), "score100_us_p99": _us(score, 99),
            "naive_update_us_p50": _us(naive_up, 50), "naive_score100_us_p99": _us(naive_sc, 99)}


def _hybrid(n_items: int, d: int, z: Any, n_candidates: int,
            rng: np.random.Generator) -> dict[str, float]:
    p = HybridLinUCB(dim=d, alpha=1.0, z=z, max_items=n_items, feature_space="bench")
    ids = [f"item{i}" for i in range(n_items)]
    t0 = time.perf_counter()
    step = 20_000
    for lo in range(0, n_items, step):
        m = min(step, n_items - lo)
        p.update(rng.normal(size=(m, d)), rng.normal(size=m), ids[lo:lo + m])
    fill = time.perf_counter() - t0
    Qs = rng.normal(size=(16, n_candidates, d))
    picks = rng.integers(0, n_items, size=(_SCORES, n_candidates))
    args = [(Qs[j % 16], [ids[i] for i in picks[j]]) for j in range(_SCORES)]
    p.score(*args[0])  # factorise Ã once, outside the timing
    score = _timed(p.score, args)
    view = p.serving_view()  # what a server scores with (bandits.hybrid_serving)
    view.score(*args[0])
    served = _timed(view.score, args)
    return {"bytes_per_item": round(p.nbytes() / n_items, 1), "score100_us_p50": _us(score, 50),
            "score100_us_p99": _us(score, 99), "serving_score100_us_p50": _us(served, 50),
            "serving_score100_us_p99": _us(served, 99), "fill_s": round(fill, 2),
            "fill_rows_per_s": round(n_items / fill)}


def run_bandits_bench(dims: Sequence[int] = (32, 64, 128), n_candidates: int = 100,
                      hybrid_items: Sequence[int] = (10_000, 1_000_000), seed: int = 0,
                      hybrid_z: Any = "bias", hybrid_dim: int = 64) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-able result (keys in the module docstring)."""
    with threadpool_limits(limits=1, user_api="blas"):  # as the worker runs its learner
        return _run(dims, n_candidates, hybrid_items, seed, hybrid_z, hybrid_dim)


def _run(dims: Sequence[int], n_candidates: int, hybrid_items: Sequence[int], seed: int,
         hybrid_z: Any, hybrid_dim: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    out: dict[str, Any] = {"n_candidates": n_candidates, "seed": seed}
    for d in dims:
        t0 = time.perf_counter()
        res = _linucb(int(d), n_candidates, rng)
        out[f"d{d}"] = res
        print(f"[bench bandits] linucb d={d}: update p50 {res['update_us_p50']} us "
              f"(naive {res['naive_update_us_p50']}), batched {res['batch_updates_per_s']:,} "
              f"rows/s, score{n_candidates} p50/p99 {res['score100_us_p50']}/"
              f"{res['score100_us_p99']} us (naive p99 {res['naive_score100_us_p99']}) — "
              f"{time.perf_counter() - t0:.1f} s, total {time.perf_counter() - start:.1f} s",
              flush=True)
    hybrid: dict[str, Any] = {"dim": hybrid_dim, "z": hybrid_z if isinstance(hybrid_z, str)
                              else list(hybrid_z)}
    for n in hybrid_items:
        t0 = time.perf_counter()
        res = _hybrid(int(n), hybrid_dim, hybrid_z, n_candidates, rng)
        hybrid[str(n)] = res
        print(f"[bench bandits] hybrid d={hybrid_dim} z={hybrid['z']} items={n:,}: "
              f"{res['bytes_per_item']} B/item, score{n_candidates} p50/p99 "
              f"{res['score100_us_p50']}/{res['score100_us_p99']} us (serving view "
              f"{res['serving_score100_us_p50']}/{res['serving_score100_us_p99']} us) — "
              f"{time.perf_counter() - t0:.1f} s, total {time.perf_counter() - start:.1f} s",
              flush=True)
    out["hybrid"] = hybrid
    out["total_s"] = round(time.perf_counter() - start, 1)
    return out
