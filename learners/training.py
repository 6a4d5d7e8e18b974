"""The adapter training loop one fine-tune runs, wherever it runs (a child process or a thread).

References
----------
Riquelme, Tucker, Snoek (2018). Deep Bayesian Bandits Showdown. ICLR.
(NeuralLinear: train the representation, then refit the linear bandit's
statistics in the new representation from the replay buffer, :mod:`learners.refit`.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from learners.adapter import Adapter
from learners.exceptions import FineTuneError
from learners.features import attr_onehot, block_widths, phi_torch
from learners.replay import ReplayRows

Throttle = Callable[[float], None]  # called with the perf_counter a slice of work began at


@dataclass(frozen=True)
class TrainSpec:
    """What one run does; plain numbers only, so it travels to a child as JSON.

    >>> spec = TrainSpec(steps=5, batch_size=8)
    >>> TrainSpec.from_dict(spec.to_dict()) == spec
    True
    """

    steps: int = 200
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    head_l2: float = 1e-4
    head_iters: int = 50
    eval_rows: int = 5_000
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainSpec:
        try:
            return cls(steps=int(data["steps"]), batch_size=int(data["batch_size"]),
                       lr=float(data["lr"]), weight_decay=float(data["weight_decay"]),
                       head_l2=float(data["head_l2"]), head_iters=int(data["head_iters"]),
                       eval_rows=int(data["eval_rows"]), seed=int(data["seed"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise FineTuneError(f"bad training spec: {exc!r}") from exc


@dataclass(frozen=True)
class TrainOutcome:
    """A trained adapter (CPU, float32) and how training went."""

    adapter: Adapter
    loss_before: float  # log-loss of the best linear head on φ in the old space
    loss_after: float  # same, in the new space (both on the same snapshot rows)
    steps: int
    train_seconds: float  # the Adam loop only
    #: ``(n_items, k_item)`` trained item id embeddings when the run trained them
    #: (``item_ids=``), added to each adapted item vector; else None.
    item_table: np.ndarray | None = None


def _fit_head(
    X: torch.Tensor, y: torch.Tensor, l2: float, iters: int, throttle: Throttle | None = None
) -> tuple[nn.Linear, float]:
    """Best logistic head on fixed features (L-BFGS); returns it and its log-loss."""
    head = nn.Linear(X.shape[1], 1, bias=False).to(X.device)
    nn.init.zeros_(head.weight)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=iters,
                            line_search_fn="strong_wolfe")

    def closure():
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(head(X).squeeze(1), y)
        loss = loss + l2 * head.weight.pow(2).sum()
        loss.backward()
        if throttle is not None:
            throttle(t0)
        return loss

    opt.step(closure)
    with torch.no_grad():
        loss = F.binary_cross_entropy_with_logits(head(X).squeeze(1), y).item()
    return head, loss


def train_adapter(
    rows: ReplayRows,
    adapter: Adapter,
    dim: int,
    spec: TrainSpec,
    device: torch.device,
    stop: Callable[[], bool] | None = None,
    throttle: Throttle | None = None,
    item_ids: int | None = None,
) -> TrainOutcome:
    """Fit the best logistic head on the current φ (``loss_before``), train a clone of
    ``adapter`` and the head jointly with Adam for ``spec.steps`` micro-batches (BCE on
    ``clip(reward, 0, 1)``), refit the head (``loss_after``).

    ``item_ids = n_items`` also trains an item id embedding table (zero at the start,
    so ``loss_before`` is the same φ's) that is added to each row's adapted item
    vector, indexed by ``rows.item_rows`` (rows without an item get none): the
    collaborative signal NeuralLinear's φ can carry beside the text embedding
    (``stream.evaluate.idembed`` measures whether it pays).

    ``stop()`` is asked before every step (a True ends the loop early);
    ``throttle`` is given each slice of work's start time (the in-thread path sleeps
    there). Losses are measured on at most ``spec.eval_rows`` snapshot rows.
    """
    n = len(rows)
    if n == 0:
        raise FineTuneError("replay buffer is empty")
    pin = device.type == "cuda"

    def put(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        return (t.pin_memory() if pin else t).to(device, non_blocking=True)

    items, profiles = put(rows.item_emb), put(rows.profiles)
    tail = put(np.hstack([attr_onehot(rows.gender, rows.age), np.ones((n, 1))]))
    y = put(np.clip(rows.rewards, 0.0, 1.0))
    gen = torch.Generator().manual_seed(spec.seed)
    ev = (torch.randperm(n, generator=gen)[: spec.eval_rows].sort().values
          if n > spec.eval_rows else torch.arange(n)).to(device)

    adapter = adapter.clone().float().to(device)
    table, rows_of = None, None
    if item_ids is not None:
        if len(rows.item_rows) and int(rows.item_rows.max()) >= item_ids:
            raise FineTuneError(f"item row {int(rows.item_rows.max())} >= item_ids={item_ids}")
        # one extra all-zero row (never trained: no gradient reaches it) for rows without an item
        table = nn.Embedding(item_ids + 1, block_widths(dim)[0], padding_idx=item_ids)
        nn.init.zeros_(table.weight)
        table = table.to(device)
        rows_of = torch.from_numpy(np.where(rows.item_rows >= 0, rows.item_rows, item_ids)
                                   .astype(np.int64)).to(device)

    def features(ad: Adapter, idx: torch.Tensor) -> torch.Tensor:
        offset = None if table is None else table(rows_of[idx])
        return phi_torch(ad, items[idx], profiles[idx], tail[idx], dim, offset)

    with torch.no_grad():
        x_ev = features(adapter, ev)
    head, loss_before = _fit_head(x_ev, y[ev], spec.head_l2, spec.head_iters, throttle)

    params = [*adapter.parameters(), *head.parameters(),
              *(() if table is None else table.parameters())]
    opt = torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    t0 = time.perf_counter()
    done = 0
    for _ in range(spec.steps):
        if stop is not None and stop():
            break
        t_step = time.perf_counter()
        idx = torch.randint(0, n, (spec.batch_size,), generator=gen).to(device, non_blocking=True)
        logits = head(features(adapter, idx)).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logits, y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done += 1
        if throttle is not None:
            throttle(t_step)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    secs = time.perf_counter() - t0
    adapter.eval()
    with torch.no_grad():
        x_ev = features(adapter, ev)
    _, loss_after = _fit_head(x_ev, y[ev], spec.head_l2, spec.head_iters, throttle)
    item_table = None if table is None else table.weight.detach().cpu().double().numpy()[:-1]
    return TrainOutcome(adapter=adapter.cpu(), loss_before=loss_before, loss_after=loss_after,
                        steps=done, train_seconds=secs, item_table=item_table)
