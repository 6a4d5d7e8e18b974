"""The erasure topic: publishing markers (``fairstream forget``) and following them.

``fairstream.erasure`` is compacted, one partition, key = the erasure token of a
pseudonym (:mod:`stream.core.erasure`), value = ``{"v": 1, "erased_at": …}``. Workers
and servers read it from the beginning with no consumer group, as they read the catalog.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from stream.core.erasure import decode_marker, encode_marker, token
from stream.exceptions import ErasureNotWritten, InvalidEvent
from stream.kafka.follow import DecodedFeed
from stream.privacy import Pseudonymizer
from stream.settings import Settings

log = logging.getLogger(__name__)


def erasure_tokens(settings: Settings, user_id: str) -> list[str]:
    """The tokens of every pseudonym ``user_id`` has had: under the current pseudonym key
    and each of ``privacy.previous_pseudonym_keys``."""
    return [token(edge.user(user_id)) for edge in Pseudonymizer.all_from_settings(settings.privacy)]


def publish_erasure(settings: Settings, user_id: str, producer: KafkaProducer | None = None,
                    timeout_s: float = 30.0) -> list[tuple[str, float]]:
    """Publish the erasure markers of ``user_id`` and wait until Kafka holds them; returns
    them as ``(token, erased_at)``. The raw id and its pseudonyms go nowhere: only their
    tokens travel."""
    own = producer is None
    if own:
        producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all",
                                 client_id=f"{settings.kafka.client_id}-erasure")
    tokens = erasure_tokens(settings, user_id)
    erased_at = time.time()
    value = encode_marker(erased_at)
    try:
        futures = [producer.send(settings.topics.erasure, key=t.encode(), value=value)
                   for t in tokens]
        producer.flush(timeout=timeout_s)
        for future in futures:
            future.get(timeout=timeout_s)  # raises what the broker answered
    except KafkaError as exc:
        raise ErasureNotWritten(f"erasure markers not acknowledged by Kafka ({exc}); "
                                "the user is not forgotten yet: retry") from None
    finally:
        if own:
            producer.close()
    log.info("erasure published for %d pseudonym(s) on %s", len(tokens),
             settings.topics.erasure)
    return [(t, erased_at) for t in tokens]


class ErasureFeed(DecodedFeed):
    """Follows ``fairstream.erasure`` from its beginning: ``poll`` returns the markers that
    arrived as ``(token, erased_at)``, ``load`` reads to the end (a start's catch-up)."""

    def __init__(self, settings: Settings, client: str = "erasure") -> None:
        super().__init__(settings, settings.topics.erasure, client)

    def poll(self, timeout_ms: int = 0) -> list[tuple[str, float]]:
        batch: dict[Any, list[Any]] = self.consumer.poll(timeout_ms=timeout_ms)
        out = []
        for records in batch.values():
            for record in records:
                try:
                    out.append((record.key.decode(), decode_marker(record.value)))
                except (AttributeError, UnicodeDecodeError, InvalidEvent):
                    log.warning("skipping a malformed erasure record at offset %d",
                                record.offset)
        return out


