"""The dead-letter sender: a rejected record goes to ``fairstream.events.dlq`` byte for byte.

The record keeps its key and value; headers carry the rejection ``reason`` (one of
:data:`stream.events.REASONS`), a ``detail`` and the ``source`` topic/partition/offset.
Sends are asynchronous; :meth:`DeadLetters.flush` waits for them, and the
:class:`~stream.worker.checkpointer.Checkpointer` calls it before writing a checkpoint
that covers their offsets.
"""

from __future__ import annotations

import logging

from kafka import KafkaProducer

from stream.exceptions import InvalidEvent
from stream.metrics import Metrics
from stream.settings import Settings

log = logging.getLogger(__name__)


class DeadLetters:
    """Sends rejected records to the DLQ and counts them by reason; ``sent`` counts all."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.sent = 0
        k = settings.kafka
        self.producer = KafkaProducer(bootstrap_servers=k.bootstrap, acks="all", linger_ms=20,
                                      client_id=f"{k.client_id}-dlq")

    def send(self, partition: int, offset: int, key: bytes | None, value: bytes | None,
             exc: InvalidEvent) -> None:
        self.metrics.events_rejected.labels(reason=exc.reason).inc()
        self.sent += 1
        source = f"{self.settings.topics.events}/{partition}/{offset}"
        headers = [("reason", exc.reason.encode()), ("detail", exc.detail[:1000].encode()),
                   ("source", source.encode())]
        self.producer.send(self.settings.topics.dlq, key=key, value=value, headers=headers)
        log.debug("dead-lettered %s: %s", source, exc)

    def flush(self) -> None:
        """Wait until every dead letter sent so far is acknowledged."""
        self.producer.flush()

    def close(self) -> None:
        self.producer.flush()
        self.producer.close()
