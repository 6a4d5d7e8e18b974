"""`fairstream eval ids`: does a collaborative id signal in the fine-tune pay?

NeuralLinear's φ is built from the frozen MiniLM text embedding of each item, so
two films with similar descriptions look alike whatever their audiences say. A
trainable item id embedding, added to the adapted item vector and trained with
the adapter (:func:`learners.training.train_adapter` with ``item_ids=``), lets
φ carry what co-ratings say. The hybrid policy already memorises each item
with its own per-item terms, so the question is whether the id signal adds
anything *beside* those.

Protocol, per seed (the same closed-loop MovieLens stream as ``eval sim``):

1. The worker's own learning path (:class:`~stream.evaluate.deployed.DeployedAgent`
   with the configured policy, fine-tune off) runs over the stream and keeps
   every learned row in its replay buffer.
2. The rows are split by arrival: the first ``train_share`` train, the rest test.
3. Three feature maps are made from the train rows with the same training
   budget: the start map (the PCA adapter, no fine-tune), the fine-tune as
   shipped, and the fine-tune with trainable item id embeddings.
4. In each map, the configured policy (the product's hybrid, with per-item
   terms) and a shared-only LinUCB learn the train rows, then predict the test
   rows prequentially (each batch of the arrival order is predicted, then
   learned). Reported: mean squared error, log-loss of the clipped prediction
   and AUC (how well the prediction orders liked before not-liked rows, which is
   what choosing among candidates needs).

Users are not given id embeddings: the replay buffer holds profiles, not user
ids, and the per-user profile already is a memory of the user's likes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bandits import LinUCB, Policy, predicted_reward
from learners import FeatureMap
from learners.replay import ReplayRows
from learners.training import TrainSpec, train_adapter
from stream.core.state import new_policy
from stream.evaluate.deployed import DeployedAgent
from stream.evaluate.simulation import EvalWorld, draw_stream, run_seed
from stream.settings import Settings

__all__ = ["VARIANTS", "auc", "run_idembed_eval"]

VARIANTS = ("start_map", "finetune", "finetune_item_ids")
#: The smallest mean test-AUC gain that pays for a second per-item table in every
#: published policy and checkpoint (and its own cold-start gap): below it, ids lose.
MIN_AUC_GAIN = 0.005
_BATCH = 500  # test rows predicted, then learned, at a time (arrival order)


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for binary ``y`` (Mann–Whitney, ties averaged).

    >>> auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
    """
    y = np.asarray(y) > 0.5
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    _, inv, counts = np.unique(score, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inv]  # 1-based average rank of each value
    return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def _take(rows: ReplayRows, idx: np.ndarray) -> ReplayRows:
    return ReplayRows(rows.item_emb[idx], rows.profiles[idx], rows.gender[idx], rows.age[idx],
                      rows.rewards[idx], rows.seq[idx], rows.item_rows[idx])


def _phi(fmap: FeatureMap, rows: ReplayRows, table: np.ndarray | None) -> np.ndarray:
    items = fmap.adapt(rows.item_emb)
    if table is not None:
        items = items + table[rows.item_rows]
    return fmap.assemble(items, fmap.adapt(rows.profiles), rows.gender, rows.age)


def _score(policy: Policy, X_tr: np.ndarray, r_tr: np.ndarray, ids_tr: list[str],
           X_te: np.ndarray, r_te: np.ndarray, ids_te: list[str]) -> dict[str, float]:
    """Learn the train rows, then predict-then-learn the test rows batch by batch."""
    def ids(i: list[str]) -> list[str] | None:
        return i if policy.uses_item_ids else None

    policy.update(X_tr, r_tr, item_ids=ids(ids_tr))
    pred = np.empty(len(r_te))
    for lo in range(0, len(r_te), _BATCH):
        sl = slice(lo, lo + _BATCH)
        pred[sl] = predicted_reward(policy, X_te[sl], ids(ids_te[sl]))
        policy.update(X_te[sl], r_te[sl], item_ids=ids(ids_te[sl]))
    p = np.clip(pred, 1e-4, 1 - 1e-4)
    y = np.clip(r_te, 0.0, 1.0)
    return {"mse": float(np.mean((pred - r_te) ** 2)),
            "logloss": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))),
            "auc": auc(y, pred)}


def _one_seed(world: EvalWorld, settings: Settings, seed: int, events: int, k: int,
              train_share: float, spec: TrainSpec, progress: bool) -> dict[str, Any]:
    agent = DeployedAgent("deployed", world, {}, seed=seed, settings=settings,
                          replay_rows=events * k)
    run_seed(world, draw_stream(world, seed), [agent], k, progress=progress,
             desc=f"eval ids seed {seed}: learning")
    state = agent.state
    rows = state.buffer.snapshot()
    rows = _take(rows, np.argsort(rows.seq, kind="stable"))
    cut = int(len(rows) * train_share)
    train, test = _take(rows, np.arange(cut)), _take(rows, np.arange(cut, len(rows)))
    names = state.catalog.ids
    ids_tr = [names[i] for i in train.item_rows]
    ids_te = [names[i] for i in test.item_rows]
    dim, start = state.fmap.dim, state.fmap
    maps: dict[str, tuple[FeatureMap, np.ndarray | None, dict[str, float]]] = {
        "start_map": (start, None, {})}
    for name, with_ids in (("finetune", False), ("finetune_item_ids", True)):
        t0 = time.perf_counter()
        out = train_adapter(train, start.adapter, dim, spec, torch.device("cpu"),
                            item_ids=len(state.catalog) if with_ids else None)
        maps[name] = (FeatureMap(out.adapter, dim=dim), out.item_table,
                      {"train_logloss_before": out.loss_before,
                       "train_logloss_after": out.loss_after,
                       "train_s": round(time.perf_counter() - t0, 1)})
        if progress:
            print(f"[eval ids] seed {seed}: {name} trained in {maps[name][2]['train_s']} s "
                  f"(train log-loss {out.loss_before:.4f} -> {out.loss_after:.4f})", flush=True)
    result: dict[str, Any] = {"seed": seed, "train_rows": len(train), "test_rows": len(test)}
    for name, (fmap, table, info) in maps.items():
        X_tr, X_te = _phi(fmap, train, table), _phi(fmap, test, table)
        product = new_policy(agent.settings, fmap)
        shared = LinUCB(dim=dim, alpha=0.0, lam=settings.bandit.lam,
                        feature_space=fmap.feature_space)
        result[name] = {**info,
                        settings.bandit.algorithm: _score(product, X_tr, train.rewards, ids_tr,
                                                          X_te, test.rewards, ids_te),
                        "linucb_shared": _score(shared, X_tr, train.rewards, ids_tr,
                                                X_te, test.rewards, ids_te)}
    return result


def _mean(per_seed: list[dict[str, Any]], variant: str, policy: str, metric: str
          ) -> dict[str, float]:
    v = np.array([s[variant][policy][metric] for s in per_seed], dtype=np.float64)
    return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}


def _report(results: dict[str, Any]) -> str:
    lines = ["# Item id embeddings in the fine-tune (`fairstream eval ids`)", "",
             f"{results['events']} arrivals × {len(results['seeds'])} seeds; train on the first "
             f"{results['train_share']:.0%} of each seed's learned rows, test on the rest "
             "(predicted, then learned, in arrival order). Mean over seeds [min, max].", "",
             "| feature map | policy | test AUC | test log-loss | test MSE |",
             "|---|---|---|---|---|"]
    for variant in VARIANTS:
        for policy, cells in results["summary"][variant].items():
            row = " | ".join(f"{cells[m]['mean']:.4f} [{cells[m]['min']:.4f}, "
                             f"{cells[m]['max']:.4f}]" for m in ("auc", "logloss", "mse"))
            lines.append(f"| {variant} | {policy} | {row} |")
    lines += ["", f"Verdict: {results['verdict']}", ""]
    return "\n".join(lines)


def _plot(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = list(results["summary"][VARIANTS[0]])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, metric in zip(axes, ("auc", "logloss"), strict=True):
        width = 0.8 / len(VARIANTS)
        for j, variant in enumerate(VARIANTS):
            cells = [results["summary"][variant][p][metric] for p in policies]
            mean = np.array([c["mean"] for c in cells])
            err = np.array([[c["mean"] - c["min"] for c in cells],
                            [c["max"] - c["mean"] for c in cells]])
            ax.bar(np.arange(len(policies)) + j * width, mean, width, yerr=err, capsize=3,
                   label=variant)
        ax.set_xticks(np.arange(len(policies)) + 0.4 - width / 2, policies)
        ax.set_title(f"test {metric} (seed range)")
        lo = min(results["summary"][v][p][metric]["min"] for v in VARIANTS for p in policies)
        hi = max(results["summary"][v][p][metric]["max"] for v in VARIANTS for p in policies)
        ax.set_ylim(lo - 0.1 * (hi - lo + 1e-3), hi + 0.1 * (hi - lo + 1e-3))
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_idembed_eval(settings: Settings, events: int = 20_000, seeds: Sequence[int] = (0, 1, 2),
                     *, k: int = 5, train_share: float = 0.8, steps: int | None = None,
                     out_dir: str | Path = "runs/eval-ids", json_path: Path | None = None,
                     world: EvalWorld | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the protocol of the module docstring; writes report.md, ids.png (and the JSON)."""
    from stream.evaluate.sim import load_world

    if not 0.0 < train_share < 1.0:
        raise ValueError(f"train_share must be in (0, 1), got {train_share}")
    ft = settings.finetune
    spec = TrainSpec(steps=steps or ft.steps, batch_size=ft.batch_size, lr=ft.lr)
    world = world or load_world(settings, events)
    per_seed = [_one_seed(world, settings, int(s), events, k, train_share, spec, progress)
                for s in seeds]
    policies = [p for p in per_seed[0]["start_map"] if isinstance(per_seed[0]["start_map"][p],
                                                                  dict)]
    summary = {v: {p: {m: _mean(per_seed, v, p, m) for m in ("auc", "logloss", "mse")}
                   for p in policies} for v in VARIANTS}
    product = settings.bandit.algorithm
    gain = (summary["finetune_item_ids"][product]["auc"]["mean"]
            - summary["finetune"][product]["auc"]["mean"])
    every = all(s["finetune_item_ids"][product]["auc"] > s["finetune"][product]["auc"]
                for s in per_seed)
    wins = every and gain >= MIN_AUC_GAIN
    verdict = (f"item id embeddings {'win' if wins else 'do not win'} with {product}: "
               f"mean test AUC {gain:+.4f} over the shipped fine-tune "
               f"({'better' if every else 'not better'} on every seed; a win needs "
               f"{MIN_AUC_GAIN} and every seed).")
    results = {"events": events, "seeds": [int(s) for s in seeds], "k": k,
               "train_share": train_share, "train_spec": spec.to_dict(), "summary": summary,
               "per_seed": per_seed, "verdict": verdict, "item_ids_win": wins}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(_report(results))
    _plot(results, out / "ids.png")
    if json_path is not None:
        Path(json_path).write_text(json.dumps(results, indent=2))
    return results
