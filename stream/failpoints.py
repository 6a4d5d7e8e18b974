"""Failpoints: named places where a crash test makes this process die, exactly there.

A test starts a process with ``FAILPOINTS="name=N[;name=N]"``; the ``N``-th time the
process passes :func:`hit` of ``name`` it sends itself SIGKILL: no cleanup, no flush,
as a power cut or the OOM killer would. So a test chooses *where* a crash lands by
naming a place in the code, not by racing a signal against the process (the pattern of
the ``fail`` crate's and gofail's ``FAILPOINTS``). Without the variable, which is how
production runs, :func:`hit` is one dictionary look-up.

Places (each documented where it is hit):

* ``checkpoint.settled`` — everything a checkpoint covers is acknowledged (dead
  letters, bundles, deltas), its file not yet written;
* ``checkpoint.written`` — the file is written, its offsets not yet committed.

>>> configure("a=2;b=1")
{'a': 2, 'b': 1}
>>> configure("a")
Traceback (most recent call last):
...
ValueError: FAILPOINTS entry 'a' is not name=N (N >= 1)
>>> configure("")
{}
"""

from __future__ import annotations

import os
import signal

_points: dict[str, int] = {}
_hits: dict[str, int] = {}


def configure(spec: str) -> dict[str, int]:
    """Arm the failpoints ``spec`` names (``"name=N;..."``); returns them."""
    points = {}
    for entry in filter(None, (e.strip() for e in spec.split(";"))):
        name, sep, n = entry.partition("=")
        if not (sep and name and n.isdigit() and int(n) >= 1):
            raise ValueError(f"FAILPOINTS entry {entry!r} is not name=N (N >= 1)")
        points[name] = int(n)
    _points.clear()
    _points.update(points)
    _hits.clear()
    return dict(points)


def hit(name: str) -> None:
    """Pass failpoint ``name``: on its armed count, die by SIGKILL."""
    if name not in _points:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == _points[name]:
        os.kill(os.getpid(), signal.SIGKILL)


configure(os.environ.get("FAILPOINTS", ""))
