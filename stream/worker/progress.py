"""The worker's periodic progress line: is it keeping up, and is it learning well?

Every ``worker.log_every_s`` seconds (0: never) one INFO line::

    progress: 1,204 events/s, 30,122 rows learned (+8,960), lag 35, policy v12,
    reward 0.712 (CTR 0.694) over 8,960 shown [served 0.733, replay 0.701]

events/s and the reward are over the interval since the previous line; lag is
the total over the worker's partitions. An interval in which no impression
closed says ``reward n/a``, not 0.

>>> line = ProgressLine(every_s=10.0, clock=iter([0.0, 10.0]).__next__)
>>> text = line.due_line(events=5000, rows=1000, lag=3, version=4,
...                      window={"served": (1000, 700.0, 650)})
>>> for part in text.split(", reward "):
...     print(part)
progress: 500 events/s, 1,000 rows learned (+1,000), lag 3, policy v4
0.700 (CTR 0.650) over 1,000 shown [served 0.700]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping


class ProgressLine:
    """Builds the line when it is due; the caller logs it."""

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = float(every_s)
        self._clock = clock
        self._last_t = clock()
        self._last_events = 0
        self._last_rows = 0

    def due(self) -> bool:
        return self.every_s > 0 and self._clock() - self._last_t >= self.every_s

    def due_line(self, events: int, rows: int, lag: int, version: int,
                 window: Mapping[str, tuple[int, float, int]]) -> str:
        """The line for the interval that ends now (call it when :meth:`due`)."""
        now = self._clock()
        dt = max(now - self._last_t, 1e-9)
        rate = (events - self._last_events) / dt
        new_rows = rows - self._last_rows
        self._last_t, self._last_events, self._last_rows = now, events, rows
        shown = sum(w[0] for w in window.values())
        if shown:
            reward = sum(w[1] for w in window.values()) / shown
            ctr = sum(w[2] for w in window.values()) / shown
            by_source = ", ".join(f"{s} {w[1] / w[0]:.3f}" for s, w in sorted(window.items())
                                  if w[0])
            learning = (f"reward {reward:.3f} (CTR {ctr:.3f}) over {shown:,} shown "
                        f"[{by_source}]")
        else:
            learning = "reward n/a (no impression closed)"
        return (f"progress: {rate:,.0f} events/s, {rows:,} rows learned (+{new_rows:,}), "
                f"lag {lag:,}, policy v{version}, {learning}")
