"""A consumer of one single-partition topic read from its beginning, outside any group:
what the catalog, erasure and experiments feeds (compacted-state followers) share."""

from __future__ import annotations

import time
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from stream.settings import Settings

__all__ = ["DecodedFeed", "FromBeginning"]


class FromBeginning:
    """``open`` assigns partition 0 of ``topic`` and seeks to its start; ``close`` closes.
    The consumer is named ``<kafka.client_id>-<client>`` and commits nothing."""

    def __init__(self, settings: Settings, topic: str, client: str) -> None:
        self.settings = settings
        self.client = client
        self.tp = TopicPartition(topic, 0)
        self.consumer: KafkaConsumer | None = None

    def open(self):  # -> the subclass instance, for `Feed(...).open()`
        k = self.settings.kafka
        self.consumer = KafkaConsumer(bootstrap_servers=k.bootstrap, enable_auto_commit=False,
                                      group_id=None, client_id=f"{k.client_id}-{self.client}",
                                      auto_offset_reset="earliest")
        self.consumer.assign([self.tp])
        self.consumer.seek_to_beginning(self.tp)
        return self

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None


class DecodedFeed(FromBeginning):
    """A :class:`FromBeginning` whose ``poll`` returns what arrived, decoded (each feed
    says how), and which ``load`` reads to the topic's end: the erasure and experiments
    feeds."""

    def poll(self, timeout_ms: int = 0) -> list[Any]:
        """What arrived since the last call, decoded (each feed says how)."""
        raise NotImplementedError

    def at_end(self) -> bool:
        """Whether the topic has been read to its current end."""
        high = self.consumer.end_offsets([self.tp])[self.tp]
        return self.consumer.position(self.tp) >= high

    def load(self, timeout_s: float = 60.0) -> list[Any]:
        """Everything up to the topic's current end (a start's catch-up)."""
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while not self.at_end():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.tp.topic} not read to its end in {timeout_s} s")
            out += self.poll(timeout_ms=200)
        return out
