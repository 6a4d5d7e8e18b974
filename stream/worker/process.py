"""Process tuning for a process that is a worker (``fairstream worker``, the pipeline bench).

A worker in a process shared with other work (the demo, tests) leaves the process
alone; :class:`~stream.worker.loop.Worker` calls :func:`tune_process` only when it
owns the process.
"""

from __future__ import annotations

import gc

from threadpoolctl import threadpool_limits

#: Young-generation threshold of a worker process (the interpreter's default is 700).
GC_YOUNG_THRESHOLD = 50_000


def tune_process() -> None:
    """Tune the interpreter and numpy for a process that is a worker: :func:`tune_gc`
    and :func:`single_threaded_blas`."""
    tune_gc()
    single_threaded_blas()


def tune_gc() -> None:
    """Collect garbage the way a streaming worker allocates it.

    Per record the worker allocates a few short-lived containers (the decoded event,
    its lists, the pending impression); nearly all are freed by reference counting, yet
    every 700 of them trigger a young collection, and the older generations are then
    scanned in proportion to everything the process holds (model, catalog, profiles).
    Freezing what start-up built moves it out of every future collection, and a
    young collection every 50,000 allocations keeps cycles bounded. Measured with
    ``fairstream bench pipeline``, two runs each: 24,049 and 27,909 records/s learnt
    without, 33,252 and 33,837 with.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def single_threaded_blas() -> None:
    """Run numpy's BLAS on the calling thread only.

    A worker's matrix products are small (a poll's rows by 384 or 64 columns), and
    the other core belongs to the fetch process. With OpenBLAS's default of one
    thread per core, its helper thread spun on that core for 0.28 s of each second
    of learning (``fairstream bench pipeline``, per-thread CPU times from /proc),
    taking it from the fetch process. Fine-tunes use torch's own thread pool, which
    this leaves alone.
    """
    threadpool_limits(limits=1, user_api="blas")
