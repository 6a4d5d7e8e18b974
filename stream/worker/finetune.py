"""Fine-tune control: when to start a background fine-tune of the adapter, and adopting
the result (NeuralLinear swap: the bandit is rebuilt in the new feature space).

The fine-tune itself runs in :class:`learners.FineTuner`'s child process; this room
decides from the worker's loop (rows learned, reward drift), counts starts and
outcomes, hands a finished run to :meth:`stream.core.state.LearningState.swap`, and
keeps one :class:`FineTuneRecord` per finished run: its log-loss before and after,
and, for an adopted run, the mean reward over the ``reward_window`` rows learned
just before the swap and just after it.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from learners import FineTuneError, FineTuner, FineTuneResult, FineTuneTimeout, ReplayRows
from stream.core.state import Learned, LearningState
from stream.metrics import Metrics
from stream.settings import Settings

log = logging.getLogger(__name__)

#: Rows learned before and after a swap that its reward figures average over.
REWARD_WINDOW = 5_000


@dataclass
class FineTuneRecord:
    """One finished fine-tune, as the demo summary and the logs report it."""

    trigger: str
    rows: int
    steps: int
    wall_seconds: float
    loss_before: float
    loss_after: float
    outcome: str  # "swapped" (adopted) or "rejected"
    feature_space: str
    at_rows_learned: int
    reward_before: float | None = None  # mean reward per shown item, last window before
    reward_after: float | None = None  # ... and first window after (swapped runs only)
    #: the held-out check (LearningState.swap): recent rows' mean squared error of the
    #: current bandit (prequential) and of the rebuilt one
    mse_current: float | None = None
    mse_rebuilt: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _RewardWindow:
    """Mean reward per shown item over (about) the last ``size`` rows learned."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._parts: deque[tuple[float, int]] = deque()
        self._sum, self._n = 0.0, 0

    def add(self, total: float, n: int) -> None:
        self._parts.append((total, n))
        self._sum += total
        self._n += n
        while self._parts and self._n - self._parts[0][1] >= self.size:
            t, k = self._parts.popleft()
            self._sum -= t
            self._n -= k

    @property
    def n(self) -> int:
        return self._n

    def mean(self) -> float | None:
        return self._sum / self._n if self._n else None


class FineTuneControl:
    """Starts fine-tunes when due and adopts finished ones; inert when
    ``finetune.enabled`` is false (``tuner`` is None)."""

    def __init__(self, settings: Settings, metrics: Metrics,
                 reward_window: int = REWARD_WINDOW) -> None:
        self.metrics = metrics
        ft = settings.finetune
        self.tuner = FineTuner(
            steps=ft.steps, batch_size=ft.batch_size, lr=ft.lr, device=settings.model.device,
            every_events=ft.every_updates or None, every_seconds=ft.every_s or None,
            min_rows=ft.min_rows, seed=settings.features.seed,
            duty_cycle=ft.duty_cycle or None, max_seconds=ft.max_seconds,
            # coordinated (exchange on): the re-bases rebuild the bandit, not the result
            compute_refit=not settings.stats.exchange,
        ) if ft.enabled else None
        self.records: list[FineTuneRecord] = []
        self._drift_seen: dict[str, int] = {}
        self._started_seen = 0
        self._reward_window = reward_window
        self._recent = _RewardWindow(reward_window)
        self._after: tuple[FineTuneRecord, _RewardWindow] | None = None
        self._epoch_seen: int | None = None  # coordinated: the epoch the trigger counts in

    @property
    def started(self) -> int:
        return 0 if self.tuner is None else self.tuner.runs_started

    def summary(self) -> dict[str, Any]:
        """Counts and every finished run, for reports (the demo summary)."""
        t = self.tuner
        return {
            "started": self.started,
            "completed": 0 if t is None else t.runs_completed,
            "adopted": sum(r.outcome == "swapped" for r in self.records),
            "rejected": sum(r.outcome == "rejected" for r in self.records),
            "timed_out": 0 if t is None else t.runs_timed_out,
            "failed": 0 if t is None else t.runs_failed,
            "runs": [r.as_dict() for r in self.records],
        }

    def warm_up(self, state: LearningState) -> None:
        if self.tuner is not None:
            log.info("fine-tune path warmed up in %.1fs", self.tuner.warm_up(state.fmap))

    def learned(self, learned: Learned) -> None:
        """Feed the reward windows with one learned batch (every user appears in exactly
        one gender group, so those sums are the batch's totals)."""
        total = n = 0.0
        for group, (got, shown) in learned.reward_by_user_group.items():
            if group.startswith("gender="):
                total += got
                n += shown
        if not n:
            return
        self._recent.add(total, int(n))
        if self._after is not None:
            record, window = self._after
            window.add(total, int(n))
            if window.n >= self._reward_window:
                record.reward_after = window.mean()
                self.metrics.finetune_reward.labels(phase="after").set(record.reward_after)
                log.info("fine-tune into %s: reward %.4f before, %.4f after (%d rows each)",
                         record.feature_space, record.reward_before or float("nan"),
                         record.reward_after, self._reward_window)
                self._after = None

    def _poll(self) -> tuple[bool, FineTuneResult | None]:
        """``(True, the finished run or None while none has finished)``; ``(False, None)``
        when the run failed or timed out (counted and logged)."""
        try:
            return True, self.tuner.poll()
        except FineTuneError as exc:
            timed_out = isinstance(exc, FineTuneTimeout)
            self.metrics.finetune_failures.inc()
            self.metrics.finetunes.labels(outcome="timed_out" if timed_out else "failed").inc()
            log.error("%s", exc)
            return False, None

    def step(self, state: LearningState, lock: threading.Lock, rows_learned: int) -> bool:
        """Start a background fine-tune when due; adopt a finished one. Returns True when
        the state now holds a new feature space and policy (to be published)."""
        if self.tuner is None:
            return False
        self._count_drift(state)
        ok, result = self._poll()
        if not ok:
            return False
        if result is None:
            self.tuner.maybe_start(state.buffer, state.fmap, events_seen=rows_learned,
                                   drift=state.drift_detected())
            if self.tuner.runs_started > self._started_seen:
                self.metrics.finetunes_started.inc(self.tuner.runs_started - self._started_seen)
                self._started_seen = self.tuner.runs_started
            return False
        self.metrics.finetune_seconds.observe(result.wall_seconds or result.train_seconds)
        with lock:
            state.last_swap_check = None
            swapped = state.swap(result)
            check = state.last_swap_check or {}
        outcome = "swapped" if swapped else "rejected"
        self.metrics.finetunes.labels(outcome=outcome).inc()
        record = FineTuneRecord(
            trigger=result.trigger, rows=result.rows, steps=result.steps,
            wall_seconds=result.wall_seconds, loss_before=result.loss_before,
            loss_after=result.loss_after, outcome=outcome,
            feature_space=result.feature_space, at_rows_learned=rows_learned,
            mse_current=check.get("mse_current"), mse_rebuilt=check.get("mse_rebuilt"))
        self.records.append(record)
        log.info("fine-tune (%s, %d rows, %d steps, %.1fs): log-loss %.4f -> %.4f, recent-row "
                 "MSE %s -> %s; %s", result.trigger, result.rows, result.steps,
                 result.wall_seconds, result.loss_before, result.loss_after,
                 _fmt(record.mse_current), _fmt(record.mse_rebuilt),
                 f"now in {result.feature_space}" if swapped else "kept the current space")
        self.metrics.finetune_loss_before.set(result.loss_before)
        if swapped:
            self.metrics.finetune_loss.set(result.loss_after)
            record.reward_before = self._recent.mean()
            if record.reward_before is not None:
                self.metrics.finetune_reward.labels(phase="before").set(record.reward_before)
            self._after = (record, _RewardWindow(self._reward_window))
        return swapped

    def step_shared(self, state: LearningState, lock: threading.Lock,
                    trainer: bool) -> FineTuneResult | None:
        """The coordinated fine-tune's step (statistics exchange on, docs/scaling.md): only
        the ``trainer`` (the publisher) starts a run, never while a switch is in progress,
        on the union of every partition's sample; a finished run passing the log-loss
        check, still from the current space, is returned for the caller to announce as the
        next epoch (the bandit is rebuilt by the re-bases, not here). The
        ``every_updates`` trigger counts the group's rows since the epoch began
        (``LearningState.rows_in_epoch``), so a new trainer counts on where the last
        one stood."""
        if self.tuner is None:
            return None
        self._count_drift(state)
        if self._epoch_seen != state.epoch:  # a new epoch (or the first call): count anew
            self._epoch_seen = state.epoch
            self.tuner.count_from(0)
        rows_seen = state.rows_in_epoch
        if not trainer and self.tuner.running:
            # Partition 0, and the trainer's role with it, went to another worker: its
            # run would not be adopted; the new trainer starts its own when due.
            self.tuner.cancel()
            log.info("fine-tune cancelled: this worker no longer publishes")
            return None
        ok, result = self._poll()
        if not ok:
            return None
        if result is None:
            if trainer and state.switch is None:
                with lock:
                    view = _SampleView(state)
                self.tuner.maybe_start(view, state.fmap, events_seen=rows_seen,
                                       drift=state.drift_detected())
                if self.tuner.runs_started > self._started_seen:
                    self.metrics.finetunes_started.inc(
                        self.tuner.runs_started - self._started_seen)
                    self._started_seen = self.tuner.runs_started
            return None
        self.metrics.finetune_seconds.observe(result.wall_seconds or result.train_seconds)
        adopt = (trainer and state.switch is None
                 and result.previous_feature_space == state.fmap.feature_space
                 and result.loss_after < result.loss_before)
        outcome = "swapped" if adopt else "rejected"
        self.metrics.finetunes.labels(outcome=outcome).inc()
        self.records.append(FineTuneRecord(
            trigger=result.trigger, rows=result.rows, steps=result.steps,
            wall_seconds=result.wall_seconds, loss_before=result.loss_before,
            loss_after=result.loss_after, outcome=outcome,
            feature_space=result.feature_space, at_rows_learned=rows_seen))
        log.info("fine-tune (%s, %d sample rows, %d steps, %.1fs): log-loss %.4f -> %.4f; %s",
                 result.trigger, result.rows, result.steps, result.wall_seconds,
                 result.loss_before, result.loss_after,
                 f"announcing epoch {state.epoch + 1} in {result.feature_space}" if adopt
                 else "kept the current space")
        self.metrics.finetune_loss_before.set(result.loss_before)
        if adopt:
            self.metrics.finetune_loss.set(result.loss_after)
        return result if adopt else None

    def _count_drift(self, state: LearningState) -> None:
        for segment, count in state.drift.detections.items():
            new = count - self._drift_seen.get(segment, 0)
            if new:
                self.metrics.drift_detected.labels(segment=str(segment)).inc(new)
                self._drift_seen[segment] = count

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop a running fine-tune (its child is killed and reaped) before the worker exits."""
        if self.tuner is None:
            return
        self.tuner.cancel()
        try:
            self.tuner.wait(timeout=timeout_s)
        except FineTuneError as exc:
            log.warning("fine-tune at shutdown: %s", exc)


class _SampleView:
    """What :meth:`learners.FineTuner.maybe_start` reads of a buffer (its length, a
    snapshot, ``seen``), over the union of the partitions' samples; the union is
    gathered once, when a run starts."""

    def __init__(self, state: LearningState) -> None:
        self._state = state
        self._n = sum(map(len, (state.samples or {}).values()))
        self.seen = self._n

    def __len__(self) -> int:
        return self._n

    def snapshot(self) -> ReplayRows:
        return self._state.sample_union()


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
