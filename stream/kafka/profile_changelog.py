"""The profiles' changelog: a compacted topic per events partition holding each user's
latest profile, so a partition's next owner restores its users in time proportional to
their number, not to the history (the Kafka Streams / quix-streams changelog pattern;
docs/scaling.md).

``fairstream.profiles`` has one partition per events partition. Profiles travel in
**chunks**: one record holds up to :data:`CHUNK` profiles (users, a float32 block of
means, weights, last-seen times, in one msgpack value read with ``numpy.frombuffer``),
all as they stood at the end of one statistics delta (``end``, the events offset), and
is written only after that delta is acknowledged on ``fairstream.stats``. A chunk's key
is its own (``c:<writer>:<n>``), never reused, so compaction keeps every chunk until
its owner deletes it with a tombstone. The owner knows, for each of its users, which
chunk holds the latest profile (the ledger); a chunk whose users have all been
rewritten since is tombstoned, and one with fewer than half of them still current is
**repacked**: its current users are written again in a new chunk, then it is
tombstoned. So the partition holds at most about twice its users' profiles, whatever
the history, and a restore parses one record per :data:`CHUNK` profiles instead of one
per user (kafka-python's per-record parse was the restore's cost). Erasure goes the
same way: the chunk holding an erased user's profile is repacked without it.

Each batch closes with a marker (key ``MARKER``) naming the delta's end and its offset on
``fairstream.stats``. Restoring partition ``p`` to offset ``E`` (where the last folded
delta of ``p`` ends) is then:

1. every chunk of the changelog partition with ``end <= E`` (later ones cannot exist:
   chunks follow their acknowledged delta, and ``E`` is past every acknowledged one),
   the latest record of a user winning;
2. then the profiles carried by the deltas of ``p`` after the last marker, read from
   ``fairstream.stats`` from the marker's offset, in chain order up to ``E``: the
   changelog lags the deltas by at most what was sent since the writer's last
   checkpoint, and the deltas carry exactly those profiles. The restorer writes those
   profiles to the changelog at once (as of ``E``) with a marker of its own, so the
   next restore does not depend on deltas before the new owner's first marker.

So a crash at any point leaves nothing lost and nothing stale.

>>> import numpy as np
>>> value = encode_chunk(12, ["a", "b"], np.ones((2, 3), np.float32), np.ones(2), np.zeros(2))
>>> end, users, means, weights, last_seen = decode_chunk(value)
>>> end, users, means.shape, means.dtype.name
(12, ['a', 'b'], (2, 3), 'float32')
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec
import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from stream.core.delta import StatsDelta, delta_span, load_delta
from stream.exceptions import DeltaError, FairstreamError
from stream.kafka.tail import read_to_end
from stream.settings import Settings

log = logging.getLogger(__name__)

MARKER = b"\x00marker"
#: Profiles per changelog record at most (384 float32 each: about 0.8 MB a record) ...
CHUNK = 512
#: ... and fewer when profiles are wider: a record stays under Kafka's default 1 MB.
CHUNK_BYTES = 900 * 1024


class _Chunk(msgspec.Struct, array_like=True):
    end: int
    dim: int
    users: list[str]
    means: bytes  # (n, dim) float32, little-endian
    weights: bytes  # float64
    last_seen: bytes  # float64


class _Marker(msgspec.Struct, array_like=True):
    end: int
    stats_offset: int


_CHUNK_DECODER = msgspec.msgpack.Decoder(_Chunk)
_MARKER = msgspec.msgpack.Decoder(_Marker)
_ENCODER = msgspec.msgpack.Encoder()


def encode_chunk(end: int, users: list[str], means: np.ndarray, weights: np.ndarray,
                 last_seen: np.ndarray) -> bytes:
    means = np.ascontiguousarray(means, dtype="<f4")
    return _ENCODER.encode(_Chunk(
        end, int(means.shape[1]) if means.ndim == 2 else 0, [str(u) for u in users],
        means.tobytes(), np.ascontiguousarray(weights, "<f8").tobytes(),
        np.ascontiguousarray(last_seen, "<f8").tobytes()))


def decode_chunk(value: bytes) -> tuple[int, list[str], np.ndarray, np.ndarray, np.ndarray]:
    """``(end, users, means, weights, last_seen)``; the arrays are read-only views of
    ``value`` (no copy). Raises ``ValueError`` on a malformed chunk."""
    c = _CHUNK_DECODER.decode(value)
    n = len(c.users)
    means = np.frombuffer(c.means, dtype="<f4")
    weights, last_seen = np.frombuffer(c.weights, "<f8"), np.frombuffer(c.last_seen, "<f8")
    if c.dim <= 0 or len(means) != n * c.dim or len(weights) != n or len(last_seen) != n:
        raise ValueError("chunk arrays do not match its user list")
    return c.end, c.users, means.reshape(n, c.dim), weights, last_seen


def chunk_size(dim: int) -> int:
    """Profiles per changelog record for profiles of ``dim`` floats.

    >>> chunk_size(384), chunk_size(1024), chunk_size(10**6)
    (512, 219, 1)
    """
    return max(1, min(CHUNK, CHUNK_BYTES // (4 * dim + 96)))


@dataclass
class Restored:
    """What a restore installed: profiles from the changelog and from deltas after it."""

    from_changelog: int = 0
    from_deltas: int = 0
    seconds: float = 0.0
    records: int = 0  # changelog records read
    users: set[str] = field(default_factory=set)  # every user installed


class _Ledger:
    """One partition's chunks: which chunk holds each user's latest profile."""

    def __init__(self) -> None:
        self.where: dict[str, bytes] = {}  # user -> key of the chunk with its latest profile
        self.members: dict[bytes, set[str]] = {}  # chunk -> users it is the latest for
        self.size: dict[bytes, int] = {}  # chunk -> profiles written in it
        self.repack: set[bytes] = set()  # chunks to rewrite (their current users) and delete

    def wrote(self, key: bytes, users: list[str]) -> None:
        self.size[key] = len(users)
        self.members[key] = set(users)
        for u in users:
            old = self.where.get(u)
            if old is not None and old != key:
                self.members[old].discard(u)
                self._check(old)
            self.where[u] = key

    def gone(self, users: Iterable[str]) -> None:
        """These users' profiles must leave the changelog (erasure): their chunks go."""
        for u in users:
            key = self.where.pop(u, None)
            if key is not None:
                self.members[key].discard(u)
                self.repack.add(key)

    def _check(self, key: bytes) -> None:
        if 2 * len(self.members[key]) < self.size[key]:
            self.repack.add(key)

    def delete(self, key: bytes) -> None:
        for u in self.members.pop(key, ()):
            if self.where.get(u) == key:
                del self.where[u]
        self.size.pop(key, None)
        self.repack.discard(key)


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
                                      batch_size=1024 * 1024, max_request_size=limit,
                                      client_id=f"{k.client_id}-profiles")
        # Restores read large records: a socket buffer of a few MB and fetches of 8 MB
        # read them fastest here (a larger fetch only waits longer for its first byte).
        fetch = min(limit, 8 * 1024 * 1024)
        self.consumer = KafkaConsumer(bootstrap_servers=k.bootstrap, enable_auto_commit=False,
                                      client_id=f"{k.client_id}-profiles-restore",
                                      fetch_max_wait_ms=20,  # read_to_end: fresh ends
                                      receive_buffer_bytes=4 * 1024 * 1024,
                                      max_partition_fetch_bytes=fetch, fetch_max_bytes=fetch)
        self._writer = os.urandom(6).hex()  # chunk keys never collide between writers
        self._seq = 0
        self.ledgers: dict[int, _Ledger] = {}

    def _ledger(self, partition: int) -> _Ledger:
        return self.ledgers.setdefault(partition, _Ledger())

    def _send_chunks(self, p: int, end: int, users: list[str], means: np.ndarray,
                     weights: np.ndarray, last_seen: np.ndarray) -> int:
        ledger = self._ledger(p)
        per = chunk_size(means.shape[1] if means.ndim == 2 else 0)
        for lo in range(0, len(users), per):
            key = f"c:{self._writer}:{self._seq}".encode()
            self._seq += 1
            part = users[lo:lo + per]
            self.producer.send(self.topic, partition=p, key=key, value=encode_chunk(
                end, part, means[lo:lo + per], weights[lo:lo + per],
                last_seen[lo:lo + per]))
            ledger.wrote(key, part)
        return len(users)

    def write(self, delta: StatsDelta, stats_offset: int) -> None:
        """Changelog chunks of an acknowledged delta's profiles, then its marker."""
        p = delta.partition
        if delta.users:
            self._send_chunks(p, delta.end, [str(u) for u in delta.users], delta.means,
                              delta.weights, delta.last_seen)
        self.producer.send(self.topic, partition=p, key=MARKER,
                           value=_ENCODER.encode(_Marker(delta.end, stats_offset)))

    def forget(self, users: Iterable[str]) -> None:
        """Erased users: the chunks holding their profiles are rewritten without them at
        the next :meth:`compact`."""
        users = list(users)
        for ledger in self.ledgers.values():
            ledger.gone(users)

    def compact(self, profiles, ends: dict[int, int]) -> int:
        """Rewrite the chunks due for it (``repack``) from ``profiles``, whose owned users
        stand as of ``ends[p]`` (acknowledged delta ends), then tombstone them. Returns
        the profiles rewritten."""
        moved = 0
        for p, ledger in self.ledgers.items():
            if not ledger.repack or p not in ends:
                continue
            keys = sorted(ledger.repack)
            current = sorted({u for key in keys for u in ledger.members.get(key, ())})
            held, means, weights, last_seen = profiles.entries(current)
            moved += self._send_chunks(p, ends[p], [str(u) for u in held], means, weights,
                                       last_seen)
            for key in keys:  # after the rewrite: a crash between leaves two copies
                self.producer.send(self.topic, partition=p, key=key, value=None)
                ledger.delete(key)
        return moved

    def drop(self, partition: int) -> None:
        """Forget the ledger of a partition given to another worker."""
        self.ledgers.pop(partition, None)

    def flush(self) -> None:
        self.producer.flush()

    def restore(self, profiles, partition: int, end: int, timeout_s: float = 300.0) -> Restored:
        """Install partition ``partition``'s profiles as of events offset ``end`` into
        ``profiles``, and take over its ledger (see module doc)."""
        t0 = time.perf_counter()
        out = Restored()
        tp = TopicPartition(self.topic, partition)
        marker = _Marker(-1, -1)
        chunks: dict[bytes, tuple[list[str], np.ndarray, np.ndarray, np.ndarray]] = {}
        for rec in self._read(tp, 0, timeout_s):
            out.records += 1
            if rec.key == MARKER:
                m = _MARKER.decode(rec.value)
                if m.end <= end:
                    marker = m
                continue
            if rec.value is None:  # a chunk deleted (rewritten, or erased)
                chunks.pop(rec.key, None)
                continue
            try:
                at, users, means, weights, seen = decode_chunk(rec.value)
            except (ValueError, msgspec.DecodeError) as exc:
                log.error("skipping a malformed changelog record at %s/%d/%d: %s",
                          self.topic, partition, rec.offset, exc)
                continue
            if at <= end:
                chunks[rec.key] = (users, means, weights, seen)
        ledger = self.ledgers[partition] = _Ledger()
        latest: dict[str, bytes] = {}
        for key, (users, *_rest) in chunks.items():  # in log order: the latest wins
            ledger.size[key] = len(users)
            ledger.members[key] = set()
            for u in users:
                latest[u] = key
        for u, key in latest.items():
            ledger.members[key].add(u)
        ledger.where = latest
        for key, (users, means, weights, seen) in chunks.items():
            current = ledger.members[key]
            if len(current) == len(users):
                profiles.put(users, means, weights, seen)
            elif current:
                rows = [i for i, u in enumerate(users) if u in current]
                profiles.put([users[i] for i in rows], means[rows], weights[rows], seen[rows])
            ledger._check(key)
        out.from_changelog = len(latest)
        out.users.update(latest)
        out.from_deltas = self._replay(profiles, partition, marker, end, timeout_s, out.users)
        out.seconds = time.perf_counter() - t0
        return out

    def _replay(self, profiles, partition: int, marker: _Marker, end: int,
                timeout_s: float, installed: set[str]) -> int:
        """Profiles of the deltas of ``partition`` from the marker's delta on to ``end``;
        then written to the changelog as of ``end``, with a marker (module doc)."""
        if marker.end == end:
            return 0
        start = max(marker.stats_offset, 0)
        at, n, replayed = marker.end, 0, {}
        for rec in self._read(TopicPartition(self.stats_topic, partition), start, timeout_s):
            span = delta_span(rec.headers)
            if span is not None and (span[0] != partition or span[1] != at):
                continue  # not the next of the chain: left unread
            try:
                delta = load_delta(rec.value, key=self.key)
            except DeltaError:
                continue  # counted where the exchange reads it
            if delta.partition != partition or delta.start != at:
                continue
            if delta.users:
                profiles.put(delta.users, delta.means, delta.weights, delta.last_seen)
                installed.update(delta.users)
                replayed.update(dict.fromkeys(delta.users))
                n += len(delta.users)
            at = delta.end
            if at == end:
                held, means, weights, seen = profiles.entries(list(replayed))
                self._send_chunks(partition, end, [str(u) for u in held], means, weights,
                                  seen)
                self.producer.send(self.topic, partition=partition, key=MARKER,
                                   value=_ENCODER.encode(_Marker(end, rec.offset)))
                self.producer.flush()
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
