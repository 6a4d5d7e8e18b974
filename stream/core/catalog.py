"""The catalog: every known item's id, frozen embedding and group labels.

Both the worker and the server hold one, filled from ``fairstream.items`` by
:class:`stream.kafka.catalog_feed.CatalogFeed`; nothing here touches Kafka.

>>> import numpy as np
>>> from stream.events import CatalogItem
>>> class Ones:  # an encoder stand-in: every text embeds to the same unit vector
...     dim = 2
...     def embed(self, texts): return np.tile([1.0, 0.0], (len(texts), 1))
>>> catalog = Catalog(dim=2)
>>> catalog.add([CatalogItem(item_id="i1", text="Heat (1995)", groups={"popularity": "head"})],
...             Ones())
[0]
>>> len(catalog), catalog.index["i1"], catalog.popularity
(1, 0, ['head'])
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from stream.events import CatalogItem, decode_catalog_item
from stream.exceptions import InvalidEvent

if TYPE_CHECKING:
    from learners import Encoder

log = logging.getLogger(__name__)


class Catalog:
    """Known items: ids, frozen embeddings (float32, unit norm) and group labels."""

    def __init__(self, dim: int = 384) -> None:
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self.groups: list[dict[str, str]] = []
        #: each row's popularity group (what exposure is tracked by), kept beside ``groups``
        self.popularity: list[str] = []
        self._emb = np.zeros((0, dim), dtype=np.float32)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def embeddings(self) -> np.ndarray:
        return self._emb[: len(self.ids)]

    def add(self, items: Sequence[CatalogItem], encoder: Encoder) -> list[int]:
        """Embed and add (or update) items; returns their row indices."""
        if not items:
            return []
        vectors = encoder.embed([it.text for it in items])
        rows = []
        for item, vec in zip(items, vectors, strict=True):
            row = self.index.get(item.item_id)
            if row is None:
                row = len(self.ids)
                if row == len(self._emb):
                    grown = np.zeros((max(16, 2 * row), self._emb.shape[1]), dtype=np.float32)
                    grown[:row] = self._emb[:row]
                    self._emb = grown
                self.ids.append(item.item_id)
                self.groups.append({})
                self.popularity.append("unknown")
                self.index[item.item_id] = row
            self._emb[row] = vec
            self.groups[row] = dict(item.groups)
            self.popularity[row] = self.groups[row].get("popularity", "unknown")
            rows.append(row)
        return rows

    def add_records(self, batch: dict[Any, list[Any]], encoder: Encoder) -> int:
        """Add the items of one poll of ``fairstream.items``; a malformed record is logged
        and skipped (the topic is compacted: a fixed value replaces it). Returns the count."""
        items = []
        for records in batch.values():
            for record in records:
                try:
                    items.append(decode_catalog_item(record.value))
                except InvalidEvent as exc:
                    log.warning("skipping catalog record at offset %d: %s", record.offset, exc)
        self.add(items, encoder)
        return len(items)
