"""Per-process resource figures from ``/proc`` (Linux), for the soak to sample and fit.

:func:`proc_sample` reads one process's resident memory, open file
descriptors, threads and CPU seconds; :func:`child_pids` finds the
processes it started; :func:`slope_per_minute` is the least-squares slope
the soak reports after its warm-up.

>>> import os
>>> s = proc_sample(os.getpid())
>>> s.rss_bytes > 0 and s.fds > 0 and s.threads >= 1 and s.cpu_s >= 0
True
>>> slope_per_minute([0.0, 60.0, 120.0], [1.0, 3.0, 5.0])
2.0
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

_PROC = Path("/proc")
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class ProcSample:
    """One process at one moment: ``rss_bytes`` (VmRSS), open ``fds``, ``threads`` and
    ``cpu_s`` (user + system CPU seconds since it started)."""

    rss_bytes: int
    fds: int
    threads: int
    cpu_s: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def proc_sample(pid: int) -> ProcSample | None:
    """The process's figures now, or None if it is gone (or /proc is not there)."""
    base = _PROC / str(pid)
    try:
        status = (base / "status").read_text()
        stat = (base / "stat").read_text()
        fds = len(os.listdir(base / "fd"))
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = {k: v.strip() for k, _, v in (line.partition(":") for line in status.splitlines())}
    if "VmRSS" not in fields:  # a zombie: exited, not yet reaped
        return None
    rss = int(fields["VmRSS"].split()[0]) * 1024
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    rest = stat[stat.rindex(")") + 2:].split()
    utime, stime = int(rest[11]), int(rest[12])  # fields 14 and 15 of proc(5)
    return ProcSample(rss_bytes=rss, fds=fds, threads=int(fields["Threads"]),
                      cpu_s=(utime + stime) / _TICKS)


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (from every thread's ``children`` list)."""
    out: list[int] = []
    try:
        for task in (_PROC / str(pid) / "task").iterdir():
            try:
                out.extend(int(c) for c in (task / "children").read_text().split())
            except FileNotFoundError:
                continue
    except FileNotFoundError:
        return []
    return sorted(set(out))


def cmdline(pid: int) -> list[str]:
    """The process's argv, or [] if it is gone."""
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except FileNotFoundError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    return proc_sample(pid) is not None


def slope_per_minute(t_s: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of ``y`` against time, per minute (float64); NaN under 2 points."""
    t = np.asarray(t_s, dtype=np.float64) / 60.0
    v = np.asarray(y, dtype=np.float64)
    if len(t) < 2 or np.ptp(t) == 0:
        return float("nan")
    tc = t - t.mean()
    return float(np.dot(tc, v - v.mean()) / np.dot(tc, tc))


def load_average() -> float | None:
    """The host's 1-minute load average (None off Linux)."""
    try:
        return float((_PROC / "loadavg").read_text().split()[0])
    except (FileNotFoundError, ValueError):
        return None
