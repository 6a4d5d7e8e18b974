"""Periodic adapter fine-tune on the replay buffer, in the background (a child process).

References
----------
Riquelme, Tucker, Snoek (2018). Deep Bayesian Bandits Showdown. ICLR.
(NeuralLinear: train the representation, then refit the linear bandit's
statistics in the new representation from the replay buffer.)
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from learners.device import resolve_device
from learners.exceptions import FineTuneError, FineTuneTimeout
from learners.features import FeatureMap
from learners.finetune_child import ChildRun
from learners.refit import rows_in_space
from learners.replay import ReplayBuffer, ReplayRows
from learners.training import TrainOutcome, TrainSpec, train_adapter

log = logging.getLogger(__name__)

BACKGROUNDS = ("process", "thread")


@dataclass(frozen=True)
class FineTuneResult:
    """What one fine-tune produced; ``X``, ``r`` are the snapshot rows in the new space."""

    fmap: FeatureMap
    previous_feature_space: str
    loss_before: float  # log-loss of the best linear head on φ in the old space
    loss_after: float  # same, in the new space (both on the same snapshot rows)
    steps: int
    samples: int
    train_seconds: float  # the Adam loop only
    samples_per_s: float
    steps_per_s: float
    rows: int
    snapshot_seen: int  # buffer.seen when the snapshot was taken
    device: str
    trigger: str
    cancelled: bool  # only ever True from run(): a cancelled background run hands back nothing
    pid: int = 0  # the process that trained (a child's pid for a background run)
    wall_seconds: float = 0.0  # start to result, child start-up and file transfer included
    X: np.ndarray | None = field(default=None, repr=False)
    r: np.ndarray | None = field(default=None, repr=False)
    #: catalog row of each of ``X``'s rows (-1 unknown): per-item terms are rebuilt from it
    item_rows: np.ndarray | None = field(default=None, repr=False)
    #: arrival number of each of ``X``'s rows (the buffer's ``seq``)
    seq: np.ndarray | None = field(default=None, repr=False)

    @property
    def feature_space(self) -> str:
        return self.fmap.feature_space


@dataclass(frozen=True)
class _Job:
    """One background run in a child process, and what its result needs from the start."""

    run: ChildRun
    fmap: FeatureMap  # the space it started from
    rewards: np.ndarray
    item_rows: np.ndarray
    seq: np.ndarray
    seen: int
    trigger: str


class FineTuner:
    """Trains a clone of the live adapter on replay rows; the consumer never waits.

    Each run: snapshot the buffer, fit the best logistic head on the current φ
    (``loss_before``), train adapter and head jointly with Adam for ``steps``
    micro-batches of ``batch_size`` (BCE on ``clip(reward, 0, 1)``), refit the
    head (``loss_after``), wrap the new adapter in a new :class:`FeatureMap`
    (new ``feature_space``) and compute the snapshot's rows in that space
    (``result.X``, ``result.r``). ``maybe_start`` fires every ``every_events``
    events, every ``every_seconds`` seconds or on drift (at most one run at a
    time, only on at least ``min_rows`` buffered rows; a drift signal that
    cannot start a run is kept until one starts); ``poll`` hands back the
    result once.

    ``background="process"`` (default) trains in a child process
    (:mod:`learners.finetune_child`: rows, weights and results travel as
    files) at OS priority ``nice`` (default 10 on CPU, 0 on CUDA) with
    ``threads`` torch/BLAS threads: off the consumer's GIL, and without
    sleeping. If no child can be started (``OSError``), that run falls back to
    a thread with a logged warning. ``background="thread"`` trains in a daemon
    thread throttled to ``duty_cycle`` of wall time (default 0.1 on CPU, 1 on
    CUDA); ``duty_cycle`` applies to that path only. ``run()`` trains
    synchronously in the caller, unthrottled.

    A run past ``max_seconds`` is stopped (the child killed) and ``poll``
    raises :class:`FineTuneTimeout`, a :class:`FineTuneError`, so it is never
    adopted; ``cancel()`` stops a run and drops it (``poll`` then returns
    None). Counters: ``runs_started`` = ``runs_completed`` + ``runs_failed`` +
    ``runs_timed_out`` + ``runs_cancelled`` (+ one while a run is in flight).

    ``min_rows`` defaults to 5,000: at ``dim=64`` the adapter has 6,930
    weights, so fewer rows are fewer than its parameters, and 5,000 is also
    ``eval_rows``, the rows its before/after log-loss is measured on.

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
        min_rows: int = 5_000,
        head_l2: float = 1e-4,
        head_iters: int = 50,
        eval_rows: int = 5_000,
        threads: int = 1,
        seed: int = 0,
        compute_refit: bool = True,
        duty_cycle: float | None = None,
        max_seconds: float | None = 300.0,
        background: str = "process",
        nice: int | None = None,
    ) -> None:
        if steps < 0 or batch_size < 1 or lr <= 0:
            raise ValueError("need steps >= 0, batch_size >= 1, lr > 0")
        if background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {BACKGROUNDS}, got {background!r}")
        if max_seconds is not None and not max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0 (or None), got {max_seconds}")
        if threads < 1 or (nice is not None and not 0 <= nice <= 19):
            raise ValueError(f"need threads >= 1 and nice in [0, 19], got {threads}, {nice}")
        self.spec = TrainSpec(steps=int(steps), batch_size=int(batch_size), lr=float(lr),
                              weight_decay=float(weight_decay), head_l2=float(head_l2),
                              head_iters=int(head_iters), eval_rows=int(eval_rows),
                              seed=int(seed))
        self.steps, self.batch_size, self.lr = self.spec.steps, self.spec.batch_size, self.spec.lr
        self.device = resolve_device(device)
        self.every_events, self.every_seconds = every_events, every_seconds
        self.min_rows, self.threads, self.seed = int(min_rows), int(threads), int(seed)
        self.compute_refit = compute_refit
        self.max_seconds = None if max_seconds is None else float(max_seconds)
        self.background = background
        cuda = self.device.type == "cuda"
        # The child's priority is what keeps it from taking the consumer's core.
        self.nice = int(nice) if nice is not None else (0 if cuda else 10)
        if duty_cycle is None:
            # In a thread on a small CPU box any busy trainer takes ~half a core from the
            # consumer; throttling keeps its throughput loss near the duty cycle.
            duty_cycle = 1.0 if cuda else 0.1
        if not 0.0 < duty_cycle <= 1.0:
            raise ValueError(f"duty_cycle must be in (0, 1], got {duty_cycle}")
        self.duty_cycle = float(duty_cycle)
        self._last_events = 0
        self._last_time: float | None = None
        self._drift_pending = False
        self._job: _Job | None = None
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        self._result: FineTuneResult | None = None
        self._error: BaseException | None = None
        self.runs_started = 0
        self.runs_completed = 0
        self.runs_failed = 0
        self.runs_timed_out = 0
        self.runs_cancelled = 0

    def __repr__(self) -> str:
        return (f"FineTuner(steps={self.steps}, batch_size={self.batch_size}, lr={self.lr}, "
                f"device={self.device.type!r}, background={self.background!r}, "
                f"every_events={self.every_events}, every_seconds={self.every_seconds}, "
                f"running={self.running}, runs={self.runs_completed}/{self.runs_started})")

    # -- state ----------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        self._enforce_deadline()
        if self._job is not None:
            return self._job.run.alive()
        return self._thread is not None and self._thread.is_alive()

    @property
    def child_pid(self) -> int | None:
        """The pid of the child process of the run in flight (None when there is none)."""
        return self._job.run.pid if self._job is not None else None

    @property
    def job_dir(self) -> Path | None:
        """The run in flight's job directory (removed when the run ends)."""
        return self._job.run.dir if self._job is not None else None

    @property
    def drift_pending(self) -> bool:
        """A drift signal has arrived that no run has answered yet."""
        return self._drift_pending

    # -- triggers -------------------------------------------------------------------------------

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

    def count_from(self, events_seen: int) -> None:
        """Count the ``every_events`` trigger from ``events_seen`` (a caller whose count
        restarts, e.g. at each feature-space epoch)."""
        self._last_events = int(events_seen)

    def maybe_start(
        self,
        buffer: ReplayBuffer,
        fmap: FeatureMap,
        events_seen: int,
        now: float | None = None,
        drift: bool = False,
    ) -> bool:
        """Start a background run if a trigger fires, none is in flight and the buffer holds
        ``min_rows``. ``drift=True`` is remembered until a run starts, so a drift signal the
        caller has consumed is answered once the buffer is large enough."""
        self._drift_pending = self._drift_pending or drift
        if (self.running or self._job is not None or self._result is not None
                or self._error is not None or len(buffer) < self.min_rows):
            return False
        now = time.monotonic() if now is None else float(now)
        trigger = self.due(events_seen, now, self._drift_pending)
        if trigger is None:
            return False
        self._last_events, self._last_time = events_seen, now
        self.start(buffer, fmap, trigger=trigger)
        return True

    # -- running --------------------------------------------------------------------------------

    def start(self, buffer: ReplayBuffer, fmap: FeatureMap, trigger: str = "manual") -> None:
        """Snapshot the buffer now and train on it in the background."""
        if self.running:
            raise FineTuneError("a fine-tune is already running")
        if self._job is not None:  # finished, never polled: superseded
            self._end_job()
            self.runs_cancelled += 1
        rows, seen = buffer.snapshot(), buffer.seen
        self._cancel.clear()
        self._error = None
        self._drift_pending = False  # this run sees everything the drift was about
        self.runs_started += 1
        if self.background == "process":
            try:
                run = ChildRun(rows, fmap.adapter, fmap.dim, self.spec, str(self.device),
                               self.threads, self.nice, self.max_seconds)
            except OSError as exc:
                log.warning("cannot start a fine-tune process (%r); training in a thread "
                            "at duty cycle %.2f instead", exc, self.duty_cycle)
            else:
                self._job = _Job(run=run, fmap=fmap, seen=seen, trigger=trigger,
                                 rewards=rows.rewards.astype(np.float64, copy=True),
                                 item_rows=rows.item_rows, seq=rows.seq)
                return
        started = time.monotonic()
        deadline = None if self.max_seconds is None else started + self.max_seconds
        self._start_thread(rows, seen, fmap, trigger, started, deadline)

    def _start_thread(self, rows: ReplayRows, seen: int, fmap: FeatureMap, trigger: str,
                      started: float, deadline: float | None) -> None:
        def target() -> None:
            torch.set_num_threads(self.threads)
            try:
                result = self._train_here(rows, seen, fmap, trigger, started, deadline,
                                          throttled=True)
            except FineTuneTimeout as exc:
                self._error = exc
                self.runs_timed_out += 1
            except Exception as exc:  # re-raised by poll() in the consumer
                self._error = exc
                self.runs_failed += 1
            else:
                if self._cancel.is_set():
                    self.runs_cancelled += 1
                else:
                    self._result = result
                    self.runs_completed += 1

        self._thread = threading.Thread(target=target, name="fairstream-finetune", daemon=True)
        self._thread.start()

    def warm_up(self, fmap: FeatureMap, rows: int = 128) -> float:
        """Run the in-thread training path once on a few synthetic rows; returns seconds.

        torch initialises itself on first use (autograd, optimiser and kernel set-up):
        ~2 s of CPU on a 2-core machine, in a burst the duty-cycle throttle cannot
        pace. A worker calls this at start-up so that burst is not taken from the
        stream when the first real fine-tune starts (measured: the first run's
        thread used 1.6 s of CPU in its first 1.9 s; a warmed-up run keeps to 10 %).
        With ``background="process"`` each child pays that set-up at its own low
        priority, so there is nothing to warm: returns 0.0 at once.
        """
        if self.background == "process":
            return 0.0
        t0 = time.perf_counter()
        rng = np.random.default_rng(self.seed)
        buf = ReplayBuffer(capacity=rows, seed=self.seed, emb_dim=fmap.in_dim)
        emb = rng.normal(size=(rows, fmap.in_dim)).astype(np.float32)
        buf.add_batch(emb, emb[::-1].copy(), np.zeros(rows), np.zeros(rows),
                      (np.arange(rows) % 2).astype(np.float64))
        FineTuner(steps=2, batch_size=min(16, rows), device=str(self.device), head_iters=2,
                  eval_rows=rows, threads=self.threads, seed=self.seed, compute_refit=False,
                  background="thread", max_seconds=None).run(buf, fmap)
        return time.perf_counter() - t0

    def cancel(self) -> None:
        """Stop the run in flight and drop it, or drop a finished run's unpolled result: a
        child is killed and reaped at once, a thread stops after its current step (``wait``
        joins it). ``poll`` then has nothing."""
        self._cancel.set()
        if self._job is not None:
            self._end_job(kill=True)
            self.runs_cancelled += 1
        elif self._result is not None and not self.running:
            self._result = None
            self.runs_cancelled += 1

    def poll(self) -> FineTuneResult | None:
        """The finished run's result (once), else None; a failed run raises FineTuneError
        (:class:`FineTuneTimeout` for one stopped at ``max_seconds``)."""
        if self.running:
            return None
        if self._job is not None:
            self._collect()
        if self._error is not None:
            err, self._error = self._error, None
            if isinstance(err, FineTuneError):
                raise err
            raise FineTuneError(f"fine-tune failed: {err!r}") from err
        result, self._result = self._result, None
        return result

    def wait(self, timeout: float | None = None) -> FineTuneResult | None:
        """Join the run in flight (at most ``timeout`` s, and never past ``max_seconds``),
        then :meth:`poll`."""
        if self._job is not None:
            self._job.run.join(timeout)  # poll() stops it if the deadline came first
        elif self._thread is not None:
            self._thread.join(timeout)
        return self.poll()

    def run(self, buffer: ReplayBuffer, fmap: FeatureMap) -> FineTuneResult:
        """Synchronous fine-tune in the calling thread, unthrottled (tests, offline jobs)."""
        self._cancel.clear()
        self.runs_started += 1
        started = time.monotonic()
        deadline = None if self.max_seconds is None else started + self.max_seconds
        try:
            result = self._train_here(buffer.snapshot(), buffer.seen, fmap, "manual", started,
                                      deadline, throttled=False)
        except FineTuneTimeout:
            self.runs_timed_out += 1
            raise
        except Exception:
            self.runs_failed += 1
            raise
        self.runs_completed += 1
        return result

    # -- internals ------------------------------------------------------------------------------

    def _enforce_deadline(self) -> None:
        job = self._job
        if job is None or not job.run.overdue():
            return
        self._end_job(kill=True)
        self.runs_timed_out += 1
        self._error = FineTuneTimeout(
            f"fine-tune ({job.trigger}) ran past max_seconds={self.max_seconds:g}; "
            f"its process {job.run.pid} was stopped")

    def _collect(self) -> None:
        """Turn the exited child's files into a result or an error, then clean up."""
        job = self._job
        try:
            out = job.run.result()
        except FineTuneError as exc:
            self._error = exc
            self.runs_failed += 1
            return
        finally:
            self._end_job()
        refit = self.compute_refit
        self._result = self._result_of(
            out.outcome, job.fmap, len(job.rewards), job.seen, out.device, job.trigger, False,
            out.pid, job.run.started, out.X if refit else None, job.rewards if refit else None,
            item_rows=job.item_rows if refit else None, seq=job.seq if refit else None)
        self.runs_completed += 1

    def _end_job(self, kill: bool = False) -> None:
        job, self._job = self._job, None
        job.run.close(kill=kill)

    def _throttle(self, busy_since: float) -> None:
        """Sleep (GIL released) so background work uses at most ``duty_cycle`` of wall time."""
        if self.duty_cycle < 1.0:
            busy = time.perf_counter() - busy_since
            time.sleep(busy * (1.0 / self.duty_cycle - 1.0))

    def _train_here(self, rows: ReplayRows, seen: int, fmap: FeatureMap, trigger: str,
                    started: float, deadline: float | None, throttled: bool) -> FineTuneResult:
        """Train in this process (a thread or the caller); FineTuneTimeout past ``deadline``."""

        def late() -> bool:
            return deadline is not None and time.monotonic() >= deadline

        def timeout() -> FineTuneTimeout:
            return FineTuneTimeout(f"fine-tune ({trigger}) ran past "
                                   f"max_seconds={self.max_seconds:g}; stopped")

        throttle = self._throttle if throttled else None
        out = train_adapter(rows, fmap.adapter, fmap.dim, self.spec, self.device,
                            stop=lambda: self._cancel.is_set() or late(), throttle=throttle)
        if late():
            raise timeout()
        new_fmap = FeatureMap(out.adapter, dim=fmap.dim)
        X = r = None
        if self.compute_refit:
            X = rows_in_space(new_fmap, rows, throttle)
            r = rows.rewards.astype(np.float64, copy=True)
        if late():
            raise timeout()
        return self._result_of(out, fmap, len(rows), seen, self.device.type, trigger,
                               self._cancel.is_set(), os.getpid(), started, X, r, new_fmap,
                               item_rows=rows.item_rows if X is not None else None,
                               seq=rows.seq if X is not None else None)

    def _result_of(self, out: TrainOutcome, old: FeatureMap, rows: int, seen: int, device: str,
                   trigger: str, cancelled: bool, pid: int, started: float,
                   X: np.ndarray | None, r: np.ndarray | None,
                   new_fmap: FeatureMap | None = None,
                   item_rows: np.ndarray | None = None,
                   seq: np.ndarray | None = None) -> FineTuneResult:
        steps, secs = out.steps, out.train_seconds
        rate = 1.0 / secs if secs > 0 else float("inf")
        return FineTuneResult(
            fmap=new_fmap or FeatureMap(out.adapter, dim=old.dim),
            previous_feature_space=old.feature_space,
            loss_before=out.loss_before, loss_after=out.loss_after, steps=steps,
            samples=steps * self.batch_size, train_seconds=secs,
            samples_per_s=steps * self.batch_size * rate, steps_per_s=steps * rate,
            rows=rows, snapshot_seen=seen, device=device, trigger=trigger,
            cancelled=cancelled, pid=pid, wall_seconds=time.monotonic() - started, X=X, r=r,
            item_rows=item_rows, seq=seq,
        )
