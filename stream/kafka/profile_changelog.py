"""The profiles' changelog: a compacted topic per events partition holding each user's
latest profile, so a partition's next owner restores its users in time proportional to
their number, not to the history (the Kafka Streams / quix-streams changelog pattern;
docs/scaling.md).

``fairstream.profiles`` has one partition per events partition, key = user id. A
record's value is the profile as it stood at the end of a statistics delta (``end``,
the events offset), written only after that delta is acknowledged on
``fairstream.stats``, and each batch closes with a marker (key ``MARKER``) naming the
delta's end and its offset on ``fairstream.stats``. Restoring partition ``p`` to
offset ``E`` (where the last folded delta of ``p`` ends) is then:

1. every record of the changelog partition with ``end <= E`` (later ones cannot exist:
   records follow their acknowledged delta, and ``E`` is past every acknowledged one);
2. then the profiles carried by the deltas of ``p`` after the last marker, read from
   ``fairstream.stats`` from the marker's offset, in chain order up to ``E``: the
   changelog lags the deltas by at most what was sent since the writer's last
   checkpoint, and the deltas carry exactly those profiles.

So a crash at any point leaves nothing lost and nothing stale.

>>> import numpy as np
>>> value = encode_profile(12, np.ones(3, np.float32), 0.5, 7.0)
>>> decode_profile(value)[0], decode_profile(value)[1].tolist()
(12, [1.0, 1.0, 1.0])
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import msgspec
import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from stream.core.delta import StatsDelta, load_delta
from stream.exceptions import DeltaError, FairstreamError
from stream.kafka.tail import read_to_end
from stream.settings import Settings

log = logging.getLogger(__name__)

MARKER = b"\x00marker"


class _Profile(msgspec.Struct, array_like=True):
    end: int
    weight: float
    last_seen: float
    mean: bytes  # float32, native little-endian


class _Marker(msgspec.Struct, array_like=True):
    end: int
    stats_offset: int


_PROFILE = msgspec.msgpack.Decoder(_Profile)
_MARKER = msgspec.msgpack.Decoder(_Marker)
_ENCODER = msgspec.msgpack.Encoder()


def encode_profile(end: int, mean: np.ndarray, weight: float, last_seen: float) -> bytes:
    return _ENCODER.encode(_Profile(end, float(weight), float(last_seen),
                                    np.asarray(mean, dtype="<f4").tobytes()))


def decode_profile(value: bytes) -> tuple[int, np.ndarray, float, float]:
    p = _PROFILE.decode(value)
    return p.end, np.frombuffer(p.mean, dtype="<f4"), p.weight, p.last_seen


@dataclass
class Restored:
    """What a restore installed: profiles from the changelog and from deltas after it."""

    from_changelog: int = 0
    from_deltas: int = 0
    seconds: float = 0.0
    users: set[str] = field(default_factory=set)  # every user installed


class ProfileChangelog:
    """Writes the owned partitions' changed profiles after their deltas are acknowledged,
    and restores a partition's profiles into a :class:`~learners.ProfileStore`."""

    def __init__(self, settings: Settings) -> None:
        s = settings
        self.settings = s
        self.topic, self.stats_topic = s.topics.profiles, s.topics.stats
        self.key = s.policy.signing_key.encode()
        k, limit = s.kafka, s.stats.max_delta_bytes
        self.producer = KafkaProducer(bootstrap_servers=k.bootstrap, acks="all", linger_ms=5,
                                      batch_size=512 * 1024,
                                      client_id=f"{k.client_id}-profiles")
        self.consumer = KafkaConsumer(bootstrap_servers=k.bootstrap, enable_auto_commit=False,
                                      client_id=f"{k.client_id}-profiles-restore",
                                      fetch_max_wait_ms=20,  # read_to_end: fresh ends
                                      max_partition_fetch_bytes=limit, fetch_max_bytes=limit)

    def write(self, delta: StatsDelta, stats_offset: int) -> None:
        """Changelog records of an acknowledged delta's profiles, then its marker."""
        p = delta.partition
        for user, mean, w, t in zip(delta.users, delta.means, delta.weights.tolist(),
                                    delta.last_seen.tolist(), strict=True):
            self.producer.send(self.topic, partition=p, key=str(user).encode(),
                               value=encode_profile(delta.end, mean, w, t))
        self.producer.send(self.topic, partition=p, key=MARKER,
                           value=_ENCODER.encode(_Marker(delta.end, stats_offset)))

    def flush(self) -> None:
        self.producer.flush()

    def restore(self, profiles, partition: int, end: int, timeout_s: float = 300.0) -> Restored:
        """Install partition ``partition``'s profiles as of events offset ``end`` into
        ``profiles`` (see module doc)."""
        t0 = time.perf_counter()
        out = Restored()
        tp = TopicPartition(self.topic, partition)
        marker = _Marker(-1, -1)
        users, means, weights, seen = [], [], [], []
        for rec in self._read(tp, 0, timeout_s):
            if rec.key == MARKER:
                m = _MARKER.decode(rec.value)
                if m.end <= end:
                    marker = m
                continue
            at, mean, w, t = decode_profile(rec.value)
            if at <= end:
                users.append(rec.key.decode())
                means.append(mean)
                weights.append(w)
                seen.append(t)
        if users:
            profiles.put(users, np.vstack(means), np.array(weights), np.array(seen))
        out.from_changelog = len(users)
        out.users.update(users)
        out.from_deltas = self._replay(profiles, partition, marker, end, timeout_s, out.users)
        out.seconds = time.perf_counter() - t0
        return out

    def _replay(self, profiles, partition: int, marker: _Marker, end: int,
                timeout_s: float, installed: set[str]) -> int:
        """Profiles of the deltas of ``partition`` from the marker's delta on to ``end``."""
        if marker.end == end:
            return 0
        start = max(marker.stats_offset, 0)
        at, n = marker.end, 0
        for rec in self._read(TopicPartition(self.stats_topic, partition), start, timeout_s):
            try:
                delta = load_delta(rec.value, key=self.key)
            except DeltaError:
                continue  # counted where the exchange reads it
            if delta.partition != partition or delta.start != at:
                continue
            if delta.users:
                profiles.put(delta.users, delta.means, delta.weights, delta.last_seen)
                installed.update(delta.users)
                n += len(delta.users)
            at = delta.end
            if at == end:
                return n
        raise FairstreamError(f"restoring partition {partition}: the deltas on "
                              f"{self.stats_topic} stop at offset {at}, not {end}")

    def _read(self, tp: TopicPartition, start: int, timeout_s: float):
        self.consumer.assign([tp])
        self.consumer.seek(tp, start)
        return read_to_end(self.consumer, [tp], timeout_s)

    def close(self) -> None:
        self.producer.flush()
        self.producer.close()
        self.consumer.close()
