"""A consumer of one single-partition topic read from its beginning, outside any group:
what the catalog and erasure feeds (and any other compacted-state follower) share."""

from __future__ import annotations

from kafka import KafkaConsumer, TopicPartition

from stream.settings import Settings

__all__ = ["FromBeginning"]


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
