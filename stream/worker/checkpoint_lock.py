"""Where a worker keeps its checkpoint, and the lock that gives it to one worker only.

``worker.checkpoint_path`` empty (the default) means one file per consumer group
under the data directory, ``<data.cache_dir>/worker/<group_id>/checkpoint.npz``,
the same wherever the worker is started from. Two workers writing one checkpoint
would overwrite each other's offsets, so a worker takes an exclusive lock on
``<checkpoint>.lock`` first (``flock``: the kernel drops it when the process
dies, so a killed worker leaves no stale lock) and a second one refuses to start.

>>> import tempfile
>>> path = Path(tempfile.mkdtemp()) / "checkpoint.npz"
>>> first = CheckpointLock(path).acquire()
>>> try:
...     CheckpointLock(path).acquire()
... except CheckpointInUse as exc:
...     print(str(exc).split(" by ")[0])
checkpoint ... is in use
>>> first.release(); CheckpointLock(path).acquire().release()
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from pathlib import Path
from typing import IO

from stream.exceptions import ConfigError
from stream.settings import Settings

log = logging.getLogger(__name__)


class CheckpointInUse(ConfigError):
    """Another live process holds the checkpoint's lock."""


def checkpoint_file(settings: Settings) -> Path:
    """``worker.checkpoint_path``, or the consumer group's default under the data directory.

    >>> s = Settings().replace(data={"cache_dir": "/data"}, kafka={"group_id": "ab/c"})
    >>> str(checkpoint_file(s))
    '/data/worker/ab_c/checkpoint.npz'
    """
    if settings.worker.checkpoint_path:
        return Path(settings.worker.checkpoint_path)
    group = re.sub(r"[^A-Za-z0-9._-]", "_", settings.kafka.group_id)
    return Path(settings.data.cache_dir) / "worker" / group / "checkpoint.npz"


class CheckpointLock:
    """An exclusive, non-blocking lock on ``<path>.lock`` holding the owner's pid."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._file: IO[str] | None = None

    def acquire(self) -> CheckpointLock:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.lock_path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise CheckpointInUse(
                f"checkpoint {self.path} is in use by another worker (pid {holder}, lock "
                f"{self.lock_path}); stop it, or give this worker a checkpoint of its own "
                "(worker.checkpoint_path, FAIRSTREAM_WORKER__CHECKPOINT_PATH)") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> CheckpointLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
