"""Dead letters: rejected records on the DLQ topic, acknowledged before a checkpoint covers them.

A record the worker rejects goes to ``fairstream.events.dlq`` unchanged, with
headers ``reason``, ``detail`` and ``source`` (``topic/partition/offset``).
A value the DLQ cannot hold (larger than ``worker.dlq_max_value_bytes``, or
refused by the producer or the broker as too large) is replaced by a marker
record, so no record can stop the worker::

    {"marker": "too_large", "reason": …, "size": n, "sha256": hex,
     "head": base64(first 256 bytes), "source": "topic/partition/offset"}

Sends are asynchronous; :meth:`DeadLetters.settle` flushes the producer and
checks every send since the last call (the
:class:`~stream.worker.checkpointer.Checkpointer` calls it before every
checkpoint). A send that failed for another reason is sent again
(``worker.dlq_retries`` times); if it still fails, :class:`DeadLetterError` stops
the worker before the checkpoint that would have covered the record's offset, so a
restart reads the record again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from kafka.errors import KafkaError, MessageSizeTooLargeError, RecordListTooLargeError

from stream.exceptions import FairstreamError

log = logging.getLogger(__name__)

#: Errors that mean "this value will never fit": the record is replaced by its marker.
_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError)
_HEAD_BYTES = 256


class DeadLetterError(FairstreamError):
    """A dead letter could not be acknowledged by the broker after its retries."""


def marker(value: bytes, reason: str, source: str) -> bytes:
    """The record that stands in for a value too large for the DLQ (see module doc)."""
    return json.dumps({
        "marker": "too_large", "reason": reason, "size": len(value),
        "sha256": hashlib.sha256(value).hexdigest(),
        "head": base64.b64encode(value[:_HEAD_BYTES]).decode(), "source": source,
    }).encode()


@dataclass(slots=True)
class _Letter:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    reason: str
    source: str
    future: Any = None
    attempts: int = 0


class DeadLetters:
    """Sends rejected records to the DLQ topic and settles them before checkpoints.

    ``producer`` is any kafka-python ``KafkaProducer``; the worker gives it one of its
    own, whose ``max_request_size`` is ``worker.dlq_max_request_bytes``.
    """

    def __init__(self, producer: Any, topic: str, max_value_bytes: int, retries: int = 3) -> None:
        self.producer = producer
        self.topic = topic
        self.max_value_bytes = max_value_bytes
        self.retries = retries
        self._unsettled: list[_Letter] = []
        self.markers = 0  # values replaced by their marker, since start

    def send(self, partition: int, offset: int, key: bytes | None, value: bytes | None,
             reason: str, detail: str, source_topic: str) -> None:
        source = f"{source_topic}/{partition}/{offset}"
        headers = [("reason", reason.encode()), ("detail", detail[:1000].encode()),
                   ("source", source.encode())]
        letter = _Letter(key, value, headers, reason, source)
        if value is not None and len(value) > self.max_value_bytes:
            self._to_marker(letter)
        self._send(letter)

    def settle(self) -> None:
        """Flush the producer (dead letters and whatever else it carries), then make sure
        every dead letter since the last call is on the broker."""
        self.producer.flush()
        while self._unsettled:
            failed: list[_Letter] = []
            for letter in self._unsettled:
                try:
                    letter.future.get(timeout=0)
                except _TOO_LARGE:
                    self._to_marker(letter)
                    failed.append(letter)
                except KafkaError as exc:
                    if letter.attempts > self.retries:
                        raise DeadLetterError(
                            f"dead letter for {letter.source} not acknowledged after "
                            f"{letter.attempts} attempts: {exc}") from exc
                    log.warning("dead letter for %s failed (%s); sending again",
                                letter.source, exc)
                    failed.append(letter)
            self._unsettled = []
            for letter in failed:
                self._send(letter)
            if failed:
                self.producer.flush()

    def close(self) -> None:
        """Flush and close the producer (the final checkpoint has settled what it covers;
        a failure here must not hide the one that stopped the worker)."""
        self.producer.flush()
        self.producer.close()

    def _to_marker(self, letter: _Letter) -> None:
        if letter.value is not None and letter.headers[-1][0] != "marker":
            letter.value = marker(letter.value, letter.reason, letter.source)
            letter.headers.append(("marker", b"too_large"))
            self.markers += 1

    def _send(self, letter: _Letter) -> None:
        letter.attempts += 1
        try:
            letter.future = self.producer.send(self.topic, key=letter.key, value=letter.value,
                                               headers=letter.headers)
        except _TOO_LARGE:  # kafka-python checks max_request_size before buffering
            self._to_marker(letter)
            letter.future = self.producer.send(self.topic, key=letter.key, value=letter.value,
                                               headers=letter.headers)
        self._unsettled.append(letter)
