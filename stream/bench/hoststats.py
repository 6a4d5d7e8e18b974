"""How busy the host's CPUs were over an interval, for benchmarks to report beside their figures.

On a virtual machine the hypervisor can run other guests on "our" cores:
that time is *steal*. A latency percentile taken while a tenth of the CPU
was stolen says more about the host than about the code, so the benches
report the share of CPU time that was stolen (and idle) while they measured.
Linux only (``/proc/stat``); elsewhere the figures are ``None``.

>>> with CpuWindow() as w:
...     _ = sum(range(10_000))
>>> sorted(w.shares())
['busy', 'idle', 'steal']
"""

from __future__ import annotations

from pathlib import Path

_PROC_STAT = Path("/proc/stat")


def cpu_times() -> list[int] | None:
    """The aggregate ``cpu`` line of /proc/stat (user, nice, system, idle, iowait, irq,
    softirq, steal, ...) in clock ticks, or None where there is no /proc/stat."""
    try:
        with _PROC_STAT.open() as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    return [int(x) for x in fields[1:]]


class CpuWindow:
    """Snapshot /proc/stat at :meth:`begin` and :meth:`finish` (or on entering and leaving
    a ``with`` block); :meth:`shares` splits the interval."""

    def __init__(self) -> None:
        self.start: list[int] | None = None
        self.end: list[int] | None = None

    def begin(self) -> CpuWindow:
        self.start = cpu_times()
        return self

    def finish(self) -> None:
        self.end = cpu_times()

    def __enter__(self) -> CpuWindow:
        return self.begin()

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def shares(self) -> dict[str, float | None]:
        """``busy``, ``idle`` (idle + iowait) and ``steal`` as shares of all CPU time."""
        if self.start is None or self.end is None:
            return {"busy": None, "idle": None, "steal": None}
        d = [b - a for a, b in zip(self.start, self.end, strict=False)]
        total = sum(d[:8])  # guest time is already counted in user/nice
        if total <= 0:
            return {"busy": None, "idle": None, "steal": None}
        idle = d[3] + d[4]
        steal = d[7] if len(d) > 7 else 0
        return {"busy": (total - idle - steal) / total, "idle": idle / total,
                "steal": steal / total}
