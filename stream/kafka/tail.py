"""Reading assigned partitions to their end, as it stood when the read began.

``end_offsets`` (ListOffsets) alone is not enough: a broker may answer it with the base
offset of the last record batch plus one rather than the offset after the batch's last
record, or with a value behind a write it has just acknowledged (Tansu does both), and
kafka-python hands a fetched batch out a poll at a time. So a read ends only when every
position has reached both that bound and the high watermark of a fetch answered since
the read began: it may read a little past the end it started from, never short of it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from stream.exceptions import FairstreamError


def read_to_end(consumer: KafkaConsumer, tps: list[TopicPartition],
                timeout_s: float = 120.0) -> Iterator[ConsumerRecord]:
    """Records of ``tps`` (already assigned and positioned) up to their end."""
    end = consumer.end_offsets(tps)
    deadline = time.monotonic() + timeout_s
    fetched = False  # a poll has gone to the broker since the read began
    while True:
        batch = consumer.poll(timeout_ms=100)
        for records in batch.values():
            yield from records
        if fetched and all(_done(consumer, tp, end[tp]) for tp in tps):
            return
        fetched = True
        if time.monotonic() > deadline:
            raise FairstreamError(f"reading {sorted({tp.topic for tp in tps})} to its end "
                                  f"took over {timeout_s}s")


def _done(consumer: KafkaConsumer, tp: TopicPartition, end: int) -> bool:
    high = consumer.highwater(tp)
    position = consumer.position(tp)
    return high is not None and position >= end and position >= high
