"""The catalog feed: ``fairstream.items`` into a :class:`~stream.core.catalog.Catalog`.

One follower of the compacted items topic, shared by the worker (which polls it
between fetches) and the server (which polls it on a thread of its own). It reads
partition 0 from the beginning with no consumer group, embeds each new item with
the frozen encoder (disk cache) and adds or updates it in the catalog; a malformed
record is logged and skipped (a fixed value replaces it on the compacted topic).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from stream.kafka.follow import FromBeginning
from stream.settings import Settings

if TYPE_CHECKING:  # the feed fills a catalog it is given; it never builds one
    from learners import Encoder
    from stream.core.catalog import Catalog

log = logging.getLogger(__name__)

#: Items taken per poll: embedding is batched, and a first load embeds thousands.
MAX_RECORDS = 5000


class CatalogFeed(FromBeginning):
    """Follows ``fairstream.items`` into ``catalog``: ``poll`` adds what arrived, ``at_end``
    says whether the feed has caught up, ``load`` reads to the end before a start.

    ``client`` names the consumer (``<kafka.client_id>-<client>``)."""

    def __init__(self, settings: Settings, catalog: Catalog, encoder: Encoder,
                 client: str = "catalog") -> None:
        super().__init__(settings, settings.topics.items, client)
        self.catalog = catalog
        self.encoder = encoder

    def poll(self, timeout_ms: int = 0) -> int:
        """Add the items of one poll; returns how many arrived."""
        batch: dict[Any, list[Any]] = self.consumer.poll(timeout_ms=timeout_ms,
                                                         max_records=MAX_RECORDS)
        return self.catalog.add_records(batch, self.encoder) if batch else 0

    def at_end(self) -> bool:
        """Whether every item on the topic so far has been read."""
        high = self.consumer.highwater(self.tp)
        if high is None:
            # Nothing fetched yet: ask the broker for the end offset itself.
            high = self.consumer.end_offsets([self.tp])[self.tp]
        return self.consumer.position(self.tp) >= high

    def load(self, stop: threading.Event, timeout_ms: int = 500) -> None:
        """Read the topic to its end, waiting for a first item while it is empty (or until
        ``stop`` is set)."""
        warned = False
        while not stop.is_set():
            self.poll(timeout_ms)
            if len(self.catalog) and self.at_end():
                break
            if not warned and not len(self.catalog):
                log.info("waiting for items on %s", self.tp.topic)
                warned = True
        log.info("catalog: %d items", len(self.catalog))
