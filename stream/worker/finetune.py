"""Fine-tune control: when to start a background fine-tune of the adapter, and adopting
the result (NeuralLinear swap: the bandit is rebuilt in the new feature space).

The fine-tune itself runs in :class:`learners.FineTuner`'s thread; this room decides
from the worker's loop (rows learned, reward drift), counts detections and outcomes,
and hands a finished run to :meth:`stream.core.state.LearningState.swap`.
"""

from __future__ import annotations

import logging
import threading

from learners import FineTuneError, FineTuner
from stream.core.state import LearningState
from stream.metrics import Metrics
from stream.settings import Settings

log = logging.getLogger(__name__)


class FineTuneControl:
    """Starts fine-tunes when due and adopts finished ones; inert when
    ``finetune.enabled`` is false (``tuner`` is None)."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.metrics = metrics
        ft = settings.finetune
        self.tuner = FineTuner(
            steps=ft.steps, batch_size=ft.batch_size, lr=ft.lr, device=settings.model.device,
            every_events=ft.every_updates or None, every_seconds=ft.every_s or None,
            min_rows=ft.min_rows, seed=settings.features.seed,
            duty_cycle=ft.duty_cycle or None,
        ) if ft.enabled else None
        self._drift_seen: dict[str, int] = {}

    def warm_up(self, state: LearningState) -> None:
        if self.tuner is not None:
            log.info("fine-tune path warmed up in %.1fs", self.tuner.warm_up(state.fmap))

    def step(self, state: LearningState, lock: threading.Lock, rows_learned: int) -> bool:
        """Start a background fine-tune when due; adopt a finished one. Returns True when
        the state now holds a new feature space and policy (to be published)."""
        if self.tuner is None:
            return False
        for segment, count in state.drift.detections.items():
            new = count - self._drift_seen.get(segment, 0)
            if new:
                self.metrics.drift_detected.labels(segment=str(segment)).inc(new)
                self._drift_seen[segment] = count
        try:
            result = self.tuner.poll()
        except FineTuneError as exc:
            self.metrics.finetune_failures.inc()
            log.error("%s", exc)
            return False
        if result is None:
            self.tuner.maybe_start(state.buffer, state.fmap, events_seen=rows_learned,
                                   drift=state.drift_detected())
            return False
        self.metrics.finetune_seconds.observe(result.train_seconds)
        with lock:
            swapped = state.swap(result)
        self.metrics.finetunes.labels(outcome="swapped" if swapped else "rejected").inc()
        log.info("fine-tune (%s, %d rows, %d steps, %.1fs): log-loss %.4f -> %.4f; %s",
                 result.trigger, result.rows, result.steps, result.train_seconds,
                 result.loss_before, result.loss_after,
                 f"now in {result.feature_space}" if swapped else "kept the current space")
        if swapped:
            self.metrics.finetune_loss.set(result.loss_after)
        return swapped

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop and join a running fine-tune: a torch thread still running when the
        interpreter exits aborts the process."""
        if self.tuner is None:
            return
        self.tuner.cancel()
        try:
            self.tuner.wait(timeout=timeout_s)
        except FineTuneError as exc:
            log.warning("fine-tune at shutdown: %s", exc)
