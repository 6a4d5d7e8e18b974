"""Helpers shared by the worker tests."""

from __future__ import annotations

import urllib.request


def handled(port: int) -> float:
    """Records the worker has handled: consumed, rejected and duplicate, from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(("fairstream_events_consumed_total{",
                                   "fairstream_events_rejected_total{",
                                   "fairstream_events_duplicate_total ")))


def kill_left(procs) -> None:
    """Kill and reap the processes a test started that still run (its ``finally``)."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
