"""Reward-stream drift detection (ADWIN per segment) that triggers early fine-tunes."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from river.drift import ADWIN


class DriftMonitor:
    """One river ADWIN per segment (e.g. user group) over the reward stream.

    ``update`` returns True when that segment's ADWIN detects a change in the
    mean reward; the detection is also latched until :meth:`consume` (the
    worker passes ``drift=monitor.consume()`` to ``FineTuner.maybe_start``).
    ``detections`` counts per segment and ``total_detections`` overall, for the
    worker's metrics. At most ``max_segments`` segments are tracked (a bounded
    label set); rewards for further segments go to ``"other"``. ADWIN windows
    are not checkpointed: after a restart detection starts afresh.

    >>> mon = DriftMonitor(delta=0.002)
    >>> flags = [mon.update(0.0, "F") for _ in range(300)]
    >>> flags += [mon.update(1.0, "F") for _ in range(300)]
    >>> any(flags[:300]), any(flags[300:]), mon.consume(), mon.consume()
    (False, True, True, False)
    """

    def __init__(
        self, delta: float = 0.002, clock: int = 32, grace_period: int = 10, max_segments: int = 64
    ) -> None:
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        self.delta, self.clock, self.grace_period = float(delta), int(clock), int(grace_period)
        self.max_segments = int(max_segments)
        self._detectors: dict[Hashable, ADWIN] = {}
        self.detections: dict[Hashable, int] = {}
        self.updates = 0
        self._pending = False

    def __repr__(self) -> str:
        return (f"DriftMonitor(delta={self.delta}, segments={len(self._detectors)}, "
                f"detections={self.total_detections})")

    @property
    def total_detections(self) -> int:
        return sum(self.detections.values())

    @property
    def pending(self) -> bool:
        return self._pending

    def _detector(self, segment: Hashable) -> tuple[Hashable, ADWIN]:
        det = self._detectors.get(segment)
        if det is None:
            if len(self._detectors) >= self.max_segments and segment != "other":
                return self._detector("other")
            # Imported here: river costs ~1 s of CPU to import, and a fine-tune child
            # process (which imports this package) never needs it.
            from river.drift import ADWIN

            det = ADWIN(delta=self.delta, clock=self.clock, grace_period=self.grace_period)
            self._detectors[segment] = det
            self.detections.setdefault(segment, 0)
        return segment, det

    def update(self, reward: float, segment: Hashable = "all") -> bool:
        """Feed one reward; True when the segment's mean reward has shifted."""
        return self.update_many((reward,), segment) > 0

    def update_many(self, rewards: Iterable[float], segment: Hashable = "all") -> int:
        """Feed rewards of one segment in order; returns how many detections they caused."""
        segment, det = self._detector(segment)
        found = 0
        n = 0
        for reward in rewards:
            det.update(float(reward))
            n += 1
            if det.drift_detected:
                found += 1
        self.updates += n
        if found:
            self.detections[segment] += found
            self._pending = True
        return found

    def consume(self) -> bool:
        """True once per batch of detections since the last call (then reset)."""
        pending, self._pending = self._pending, False
        return pending

    def width(self, segment: Hashable = "all") -> int:
        """Current ADWIN window length of a segment (0 when unseen)."""
        det = self._detectors.get(segment)
        return 0 if det is None else int(det.width)
