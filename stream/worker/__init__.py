"""The learning worker: one consumer-group member that learns from ``fairstream.events``
and publishes signed policies.

:class:`Worker` is the loop; it delegates to rooms of its own, one module each.
"""

from stream.worker.loop import Worker, WorkerReport

__all__ = ["Worker", "WorkerReport"]
