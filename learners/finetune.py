"""Periodic adapter fine-tune on the replay buffer, in a background thread.

References
----------
Riquelme, Tucker, Snoek (2018). Deep Bayesian Bandits Showdown. ICLR.
(NeuralLinear: train the representation, then refit the linear bandit's
statistics in the new representation from the replay buffer.)
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from learners.adapter import Adapter
from learners.device import resolve_device
from learners.exceptions import FineTuneError
from learners.features import FeatureMap, attr_onehot, phi_torch
from learners.replay import ReplayBuffer, ReplayRows


@dataclass(frozen=True)
class FineTuneResult:
    """What one fine-tune produced; ``X``, ``r`` are the snapshot rows in the new space."""

    fmap: FeatureMap
    previous_feature_space: str
    loss_before: float  # log-loss of the best linear head on φ in the old space
    loss_after: float  # same, in the new space (both on the same snapshot rows)
    steps: int
    samples: int
    train_seconds: float
    samples_per_s: float
    steps_per_s: float
    rows: int
    snapshot_seen: int  # buffer.seen when the snapshot was taken
    device: str
    trigger: str
    cancelled: bool
    X: np.ndarray | None = field(default=None, repr=False)
    r: np.ndarray | None = field(default=None, repr=False)

    @property
    def feature_space(self) -> str:
        return self.fmap.feature_space


def refit_statistics(
    buffer: ReplayBuffer | ReplayRows, fmap: FeatureMap
) -> tuple[np.ndarray, np.ndarray]:
    """``(X, r)``: every buffered row in ``fmap``'s space, to rebuild a bandit from.

    A ridge bandit fed these rows has ``A = λI + XᵀX``, ``b = Xᵀr``.
    """
    rows = buffer.snapshot() if isinstance(buffer, ReplayBuffer) else buffer
    if len(rows) == 0:
        return np.zeros((0, fmap.dim)), np.zeros(0)
    X = fmap.transform_rows(rows.item_emb, rows.profiles, rows.gender, rows.age)
    return X, rows.rewards.astype(np.float64, copy=True)


def ridge_statistics(
    X: np.ndarray, r: np.ndarray, lam: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """``A = λI + XᵀX``, ``b = Xᵀr`` (a ridge / LinUCB / linear-TS bandit's statistics)."""
    X = np.asarray(X, dtype=np.float64)
    return lam * np.eye(X.shape[1]) + X.T @ X, X.T @ np.asarray(r, dtype=np.float64)


def _fit_head(
    X: torch.Tensor, y: torch.Tensor, l2: float, iters: int, throttle=None
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


class FineTuner:
    """Trains a clone of the live adapter on replay rows; the consumer never waits.

    Each run: snapshot the buffer, fit the best logistic head on the current φ
    (``loss_before``), train adapter and head jointly with Adam for ``steps``
    micro-batches of ``batch_size`` (BCE on ``clip(reward, 0, 1)``), refit the
    head (``loss_after``), wrap the new adapter in a new :class:`FeatureMap`
    (new ``feature_space``) and compute the snapshot's rows in that space
    (``result.X``, ``result.r``), all in a daemon thread with
    ``torch.set_num_threads(threads)``. ``maybe_start`` fires every
    ``every_events`` events, every ``every_seconds`` seconds or on drift
    (at most one run at a time); ``poll`` hands back the result once.

    >>> tuner = FineTuner(steps=5, batch_size=8, every_events=100, device="cpu")
    >>> tuner.due(events_seen=50, now=0.0), tuner.due(events_seen=100, now=1.0)
    (None, 'events')
    """

    def __init__(
        self,
        steps: int = 200,
        batch_size: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        device: str = "auto",
        every_events: int | None = 10_000,
        every_seconds: float | None = None,
        min_rows: int = 64,
        head_l2: float = 1e-4,
        head_iters: int = 50,
        eval_rows: int = 5_000,
        threads: int = 1,
        seed: int = 0,
        compute_refit: bool = True,
        duty_cycle: float | None = None,
    ) -> None:
        if steps < 0 or batch_size < 1 or lr <= 0:
            raise ValueError("need steps >= 0, batch_size >= 1, lr > 0")
        self.steps, self.batch_size, self.lr = int(steps), int(batch_size), float(lr)
        self.weight_decay = float(weight_decay)
        self.device = resolve_device(device)
        self.every_events, self.every_seconds = every_events, every_seconds
        self.min_rows, self.head_l2, self.head_iters = int(min_rows), head_l2, int(head_iters)
        self.eval_rows, self.threads, self.seed = int(eval_rows), int(threads), int(seed)
        self.compute_refit = compute_refit
        if duty_cycle is None:
            # On a small CPU box any busy background thread takes ~half a core from
            # the consumer; throttling keeps its throughput loss near the duty cycle.
            duty_cycle = 1.0 if self.device.type == "cuda" else 0.1
        if not 0.0 < duty_cycle <= 1.0:
            raise ValueError(f"duty_cycle must be in (0, 1], got {duty_cycle}")
        self.duty_cycle = float(duty_cycle)
        self._last_events = 0
        self._last_time: float | None = None
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        self._result: FineTuneResult | None = None
        self._error: BaseException | None = None
        self.runs_started = 0
        self.runs_completed = 0
        self.runs_failed = 0

    def __repr__(self) -> str:
        return (f"FineTuner(steps={self.steps}, batch_size={self.batch_size}, lr={self.lr}, "
                f"device={self.device.type!r}, every_events={self.every_events}, "
                f"every_seconds={self.every_seconds}, running={self.running}, "
                f"runs={self.runs_completed}/{self.runs_started})")

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def due(self, events_seen: int, now: float | None = None, drift: bool = False) -> str | None:
        """Which trigger fires now (``"drift"``, ``"events"``, ``"seconds"``), or None."""
        now = time.monotonic() if now is None else float(now)
        if self._last_time is None:
            self._last_time = now
        if drift:
            return "drift"
        if self.every_events is not None and events_seen - self._last_events >= self.every_events:
            return "events"
        if self.every_seconds is not None and now - self._last_time >= self.every_seconds:
            return "seconds"
        return None

    def maybe_start(
        self,
        buffer: ReplayBuffer,
        fmap: FeatureMap,
        events_seen: int,
        now: float | None = None,
        drift: bool = False,
    ) -> bool:
        """Start a background run if a trigger fires and none is running."""
        if self.running or self._result is not None or len(buffer) < self.min_rows:
            return False
        now = time.monotonic() if now is None else float(now)
        trigger = self.due(events_seen, now, drift)
        if trigger is None:
            return False
        self._last_events, self._last_time = events_seen, now
        self.start(buffer, fmap, trigger=trigger)
        return True

    def start(self, buffer: ReplayBuffer, fmap: FeatureMap, trigger: str = "manual") -> None:
        """Snapshot the buffer now and train on it in a daemon thread."""
        if self.running:
            raise FineTuneError("a fine-tune is already running")
        rows, seen = buffer.snapshot(), buffer.seen
        self._cancel.clear()
        self._error = None
        self.runs_started += 1

        def target() -> None:
            torch.set_num_threads(self.threads)
            try:
                self._result = self._train(rows, seen, fmap, trigger)
                self.runs_completed += 1
            except BaseException as exc:  # re-raised by poll() in the consumer
                self._error = exc
                self.runs_failed += 1

        self._thread = threading.Thread(target=target, name="fairstream-finetune", daemon=True)
        self._thread.start()

    def warm_up(self, fmap: FeatureMap, rows: int = 128) -> float:
        """Run the training path once, synchronously, on a few synthetic rows; returns seconds.

        torch initialises itself on first use (autograd, optimiser and kernel set-up):
        ~2 s of CPU on a 2-core machine, in a burst the duty-cycle throttle cannot
        pace. A worker calls this at start-up so that burst is not taken from the
        stream when the first real fine-tune starts (measured: the first run's
        thread used 1.6 s of CPU in its first 1.9 s; a warmed-up run keeps to 10 %).
        """
        t0 = time.perf_counter()
        rng = np.random.default_rng(self.seed)
        buf = ReplayBuffer(capacity=rows, seed=self.seed, emb_dim=fmap.in_dim)
        emb = rng.normal(size=(rows, fmap.in_dim)).astype(np.float32)
        buf.add_batch(emb, emb[::-1].copy(), np.zeros(rows), np.zeros(rows),
                      (np.arange(rows) % 2).astype(np.float64))
        FineTuner(steps=2, batch_size=min(16, rows), device=str(self.device), head_iters=2,
                  eval_rows=rows, threads=self.threads, seed=self.seed, compute_refit=False,
                  duty_cycle=1.0).run(buf, fmap)
        return time.perf_counter() - t0

    def cancel(self) -> None:
        """Ask a running fine-tune to stop after its current step."""
        self._cancel.set()

    def poll(self) -> FineTuneResult | None:
        """The finished run's result (once), else None; a failed run raises FineTuneError."""
        if self.running:
            return None
        if self._error is not None:
            err, self._error = self._error, None
            raise FineTuneError(f"fine-tune failed: {err!r}") from err
        result, self._result = self._result, None
        return result

    def wait(self, timeout: float | None = None) -> FineTuneResult | None:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.poll()

    def run(self, buffer: ReplayBuffer, fmap: FeatureMap) -> FineTuneResult:
        """Synchronous fine-tune in the calling thread (tests, offline jobs)."""
        self.runs_started += 1
        result = self._train(buffer.snapshot(), buffer.seen, fmap, "manual")
        self.runs_completed += 1
        return result

    def _throttle(self, busy_since: float) -> None:
        """Sleep (GIL released) so background work uses at most ``duty_cycle`` of wall time."""
        if self.duty_cycle < 1.0:
            busy = time.perf_counter() - busy_since
            time.sleep(busy * (1.0 / self.duty_cycle - 1.0))

    def _train(self, rows: ReplayRows, seen: int, fmap: FeatureMap, trigger: str) -> FineTuneResult:
        n = len(rows)
        if n == 0:
            raise FineTuneError("replay buffer is empty")
        dev = self.device
        pin = dev.type == "cuda"

        def put(a: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
            return (t.pin_memory() if pin else t).to(dev, non_blocking=True)

        items, profiles = put(rows.item_emb), put(rows.profiles)
        tail = put(np.hstack([attr_onehot(rows.gender, rows.age), np.ones((n, 1))]))
        y = put(np.clip(rows.rewards, 0.0, 1.0))
        gen = torch.Generator().manual_seed(self.seed)
        ev = (torch.randperm(n, generator=gen)[: self.eval_rows].sort().values
              if n > self.eval_rows else torch.arange(n)).to(dev)

        adapter: Adapter = fmap.adapter.clone().float().to(dev)
        dim = fmap.dim

        def features(ad: Adapter, idx: torch.Tensor) -> torch.Tensor:
            return phi_torch(ad, items[idx], profiles[idx], tail[idx], dim)

        with torch.no_grad():
            x_ev = features(adapter, ev)
        head, loss_before = _fit_head(x_ev, y[ev], self.head_l2, self.head_iters,
                                    self._throttle)

        params = [*adapter.parameters(), *head.parameters()]
        opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        t0 = time.perf_counter()
        done = 0
        for _ in range(self.steps):
            if self._cancel.is_set():
                break
            t_step = time.perf_counter()
            idx = torch.randint(0, n, (self.batch_size,), generator=gen).to(dev, non_blocking=True)
            logits = head(features(adapter, idx)).squeeze(1)
            loss = F.binary_cross_entropy_with_logits(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            self._throttle(t_step)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        secs = time.perf_counter() - t0
        adapter.eval()
        with torch.no_grad():
            x_ev = features(adapter, ev)
        _, loss_after = _fit_head(x_ev, y[ev], self.head_l2, self.head_iters,
                                    self._throttle)

        new_fmap = FeatureMap(adapter.cpu(), dim=dim)
        X = r = None
        if self.compute_refit:
            parts = []
            for lo in range(0, n, 4096):
                t_chunk = time.perf_counter()
                sl = slice(lo, lo + 4096)
                parts.append(new_fmap.transform_rows(
                    rows.item_emb[sl], rows.profiles[sl], rows.gender[sl], rows.age[sl]))
                self._throttle(t_chunk)
            X, r = np.vstack(parts), rows.rewards.astype(np.float64, copy=True)
        rate = 1.0 / secs if secs > 0 else float("inf")
        return FineTuneResult(
            fmap=new_fmap, previous_feature_space=fmap.feature_space,
            loss_before=loss_before, loss_after=loss_after, steps=done,
            samples=done * self.batch_size, train_seconds=secs,
            samples_per_s=done * self.batch_size * rate, steps_per_s=done * rate,
            rows=n, snapshot_seen=seen, device=dev.type, trigger=trigger,
            cancelled=self._cancel.is_set(), X=X, r=r,
        )
