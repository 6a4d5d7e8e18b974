"""Serving profiles: what a server needs of a user, one compacted record per user.

``fairstream.profiles.serving`` has as many partitions as ``fairstream.events``; a
record's key is the user's pseudonymous id (so it lands in the partition of the user's
events, by the same default partitioner) and its value a :class:`ServingProfile`: the
user's profile in the frozen embedding space (float32 mean, weight, last-seen time) and
``as_of``, the event time of the latest feedback it reflects. A tombstone (``None``)
means the user has no profile any more (erasure). Compaction keeps each user's latest,
so a server that reads the topic from its start holds every profile, and its reads
follow the profiles that changed, not the events (docs/scaling.md, "Servers").

The value is msgpack (``msgspec``), array-like, with a format number first: no pickle,
and a reader refuses a format it does not know.

>>> import numpy as np
>>> value = encode_profile(np.array([0.5, 0.25], np.float32), 1.5, 10.0, 12.0)
>>> p = decode_profile(value)
>>> p.mean.tolist(), p.weight, p.last_seen, p.as_of
([0.5, 0.25], 1.5, 10.0, 12.0)
>>> decode_profile(b"junk")
Traceback (most recent call last):
...
ValueError: not a serving profile: ...
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
import numpy as np

if TYPE_CHECKING:
    from stream.settings import Settings

#: The format this code writes; a reader refuses others.
FORMAT = 1


class _Record(msgspec.Struct, array_like=True):
    format: int
    dim: int
    mean: bytes  # (dim,) float32, little-endian
    weight: float
    last_seen: float
    as_of: float


_DECODER = msgspec.msgpack.Decoder(_Record)
_ENCODER = msgspec.msgpack.Encoder()


@dataclass(frozen=True, slots=True)
class ServingProfile:
    """A decoded record: ``mean`` is a read-only float32 view of the value."""

    mean: np.ndarray
    weight: float
    last_seen: float
    as_of: float


def encode_profile(mean: np.ndarray, weight: float, last_seen: float, as_of: float) -> bytes:
    mean = np.ascontiguousarray(mean, dtype="<f4").reshape(-1)
    return _ENCODER.encode(_Record(FORMAT, int(mean.shape[0]), mean.tobytes(), float(weight),
                                   float(last_seen), float(as_of)))


def decode_profile(value: bytes, dim: int | None = None) -> ServingProfile:
    """Raises ``ValueError`` on anything but a format-1 record (of ``dim`` values, when
    given) with finite numbers and a positive weight."""
    try:
        r = _DECODER.decode(value)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not a serving profile: {exc}") from None
    if r.format != FORMAT:
        raise ValueError(f"serving profile format {r.format}, this reader knows {FORMAT}")
    if r.dim <= 0 or len(r.mean) != 4 * r.dim or (dim is not None and r.dim != dim):
        raise ValueError(f"serving profile of {r.dim} values, {len(r.mean)} bytes"
                         + (f" (want {dim})" if dim is not None else ""))
    mean = np.frombuffer(r.mean, dtype="<f4")
    if not (r.weight > 0 and math.isfinite(r.weight) and math.isfinite(r.last_seen)
            and math.isfinite(r.as_of) and np.isfinite(mean).all()):
        raise ValueError("serving profile with a non-finite number or a weight <= 0")
    return ServingProfile(mean, r.weight, r.last_seen, r.as_of)


def read_serving_profiles(settings: Settings, timeout_s: float = 120.0
                          ) -> dict[str, ServingProfile | None]:
    """Each user's latest record on the topic, read to its end: a profile, or None for
    a tombstone (tooling and tests; a server follows the topic instead)."""
    from kafka import KafkaConsumer, TopicPartition

    from stream.kafka.tail import read_to_end

    topic = settings.topics.serving_profiles
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap,
                             enable_auto_commit=False, group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic)
                                                        or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        return {r.key.decode(): None if r.value is None else decode_profile(r.value)
                for r in read_to_end(consumer, tps, timeout_s)}
    finally:
        consumer.close()
