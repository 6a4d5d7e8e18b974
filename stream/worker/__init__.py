"""The learning worker: one consumer-group member that learns from ``fairstream.events``
and publishes signed policies.

:class:`Worker` (:mod:`~stream.worker.loop`) is a short loop that delegates: to the
:class:`Checkpointer` (flush, write state + offsets, commit), the :class:`Publisher`,
the :class:`DeadLetters` sender, :class:`FineTuneControl` and, when it owns its
process, :func:`tune_process`. :func:`run_worker` is ``fairstream worker``;
:class:`WorkerThread` runs a worker in a thread.
"""

from stream.worker.checkpointer import Checkpointer
from stream.worker.deadletter import DeadLetterError, DeadLetters
from stream.worker.finetune import FineTuneControl
from stream.worker.loop import Worker, WorkerReport
from stream.worker.process import single_threaded_blas, tune_gc, tune_process
from stream.worker.publisher import Publisher
from stream.worker.runner import WorkerThread, run_worker

__all__ = [
    "Checkpointer",
    "DeadLetterError",
    "DeadLetters",
    "FineTuneControl",
    "Publisher",
    "Worker",
    "WorkerReport",
    "WorkerThread",
    "run_worker",
    "single_threaded_blas",
    "tune_gc",
    "tune_process",
]
