"""Running a worker: :func:`run_worker` for a process of its own (``fairstream worker``),
:class:`WorkerThread` beside other work in one process (the demo, the bench, tests).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from stream.core.keys import refuse_dev_key
from stream.settings import Settings
from stream.worker.checkpoint_lock import CheckpointLock, checkpoint_file
from stream.worker.loop import Worker, WorkerReport

log = logging.getLogger(__name__)


def run_worker(settings: Settings, exit_when_idle: float | None = None) -> int:
    """``fairstream worker``: learn until SIGTERM/SIGINT (or, with ``exit_when_idle``,
    until caught up and idle that many seconds), then checkpoint, print the report as
    one JSON line and return 0. Refuses the built-in signing key (ConfigError); a second
    worker on the same checkpoint refuses to start
    (:class:`~stream.worker.checkpoint_lock.CheckpointInUse`)."""
    refuse_dev_key(settings, "fairstream worker")
    lock = CheckpointLock(checkpoint_file(settings)).acquire()  # before the model loads
    log.info("checkpoint %s (%s; locked by pid %d)", lock.path,
             "found" if lock.path.exists() else "none yet: a fresh start", os.getpid())
    worker = Worker(settings, own_process=True)
    stop = threading.Event()

    def _drain(signum: int, _frame: object) -> None:
        log.info("signal %d: draining", signum)
        stop.set()

    previous = {sig: signal.signal(sig, _drain) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        port = worker.serve_metrics()
        log.info("metrics on :%d/metrics", port)
        report = worker.run(stop, idle_exit_s=exit_when_idle)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        lock.release()
    print(json.dumps({"events": report.events, "rejected": report.rejected,
                      "duplicates": report.duplicates, "rows_learned": report.rows_learned,
                      "by_type": report.by_type}), flush=True)
    return 0


class WorkerThread:
    """Run a :class:`Worker` in a background thread until :meth:`stop`.

    :meth:`start` returns once the worker is ready (catalog loaded, state restored, the
    first policy published) and re-raises what the worker failed with; so does
    :meth:`stop`, which returns the worker's report. ``flush_on_exit`` and
    ``idle_exit_s`` are :meth:`Worker.run`'s; ``wrap`` runs the worker inside another
    call (the bench passes ``profiler.runcall``).

    Usage::

        with WorkerThread(Worker(settings)) as running:
            ...  # produce, watch running.worker.report
        report = running.report
    """

    def __init__(self, worker: Worker, *, flush_on_exit: bool = False,
                 idle_exit_s: float | None = None,
                 wrap: Callable[..., Any] | None = None) -> None:
        self.worker = worker
        self.flush_on_exit = flush_on_exit
        self.idle_exit_s = idle_exit_s
        self.wrap = wrap
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.report: WorkerReport | None = None
        self._thread: threading.Thread | None = None

    def _main(self) -> None:
        w = self.worker
        try:
            if self.wrap is not None:
                self.report = self.wrap(w.run, self.stop_event, self.idle_exit_s,
                                        self.flush_on_exit)
            else:
                self.report = w.run(self.stop_event, self.idle_exit_s, self.flush_on_exit)
        except BaseException as exc:  # surfaced to the caller by start(), stop(), check()
            self.error = exc
        finally:
            w.ready.set()  # wake start() whether the worker got ready or failed

    def start(self, timeout_s: float | None = 300.0) -> WorkerThread:
        self._thread = threading.Thread(target=self._main, name="worker", daemon=True)
        self._thread.start()
        if not self.worker.ready.wait(timeout_s):
            raise TimeoutError(f"worker not ready after {timeout_s}s")
        self.check()
        return self

    def check(self) -> None:
        """Re-raise the worker's failure, if it failed."""
        if self.error is not None:
            raise self.error

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout_s: float | None = 120.0) -> WorkerReport | None:
        """Drain, checkpoint and join; returns the worker's report."""
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise TimeoutError(f"worker did not stop in {timeout_s}s")
            self._thread = None
        self.check()
        return self.report

    def __enter__(self) -> WorkerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
