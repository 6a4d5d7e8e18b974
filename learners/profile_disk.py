"""Profiles that can outgrow memory: a bounded in-memory cache over an embedded store.

:class:`DiskProfileStore` is a :class:`~learners.profiles.ProfileStore` whose ``capacity``
bounds only the profiles held in memory (the *hot* ones, least recently observed
leaving first, as before); a profile that leaves memory is written to an embedded
key-value store on disk (**spilled**), not forgotten, and read back the next time its
user is seen. So nothing is evicted: the store holds every user it was given, memory
holds the ``capacity`` most recent, and the numbers are the in-memory store's exactly
(a profile is stored as its float32 mean and float64 weight and last-seen time, the
very values the memory store keeps).

Two embedded stores sit behind one small protocol (:class:`KeyValue`): RocksDB through
``rocksdict`` (:class:`RocksStore`, the default) and the standard library's SQLite
(:class:`SqliteStore`, WAL, one table). ``fairstream bench profiles`` measures both
beside the in-memory store (docs/scaling.md, "Measured").

What changed since the last :meth:`~DiskProfileStore.flush` (the *dirty* profiles in
memory) is written by it to the embedded store, so a flush costs what changed, not the
number of users; a profile spilled is written once when it leaves memory.
:meth:`~DiskProfileStore.close` flushes to the files and releases them, and a store
opened again on the same directory has the same profiles.

With a TTL, an expired profile is forgotten when it is next read, in memory or on disk,
as in the memory store; :meth:`~DiskProfileStore.expire` sweeps memory and disk, so it
costs the number of users (the memory store's stops at the first live one).

Value layout, little-endian: weight (float64), last-seen (float64), mean
(``emb_dim`` float32).

>>> import tempfile
>>> store = DiskProfileStore(tempfile.mkdtemp(), emb_dim=2, decay=0.5, capacity=1)
>>> store.observe("u1", np.array([1.0, 0.0]), reward=1.0, now=0.0)
>>> store.observe("u2", np.array([0.0, 1.0]), reward=1.0, now=1.0)  # u1 spills to disk
>>> len(store), store.spills, [float(v) for v in store.get("u1")]
(2, 1, [1.0, 0.0])
>>> store.close()
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import Hashable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from learners.profiles import ProfileStore

__all__ = ["BACKENDS", "DiskProfileStore", "KeyValue", "RocksStore", "SqliteStore",
           "open_backend"]


class KeyValue(Protocol):
    """An embedded byte store: what :class:`DiskProfileStore` needs of one."""

    def get(self, key: bytes) -> bytes | None: ...

    def get_many(self, keys: list[bytes]) -> list[bytes | None]: ...

    def write(self, puts: Sequence[tuple[bytes, bytes]], deletes: Sequence[bytes] = ()) -> None:
        """Apply ``puts`` then ``deletes`` as one batch."""

    def all_keys(self) -> Iterator[bytes]: ...

    def items(self) -> Iterator[tuple[bytes, bytes]]: ...

    def flush(self) -> None:
        """Make what was written durable on disk."""

    def close(self) -> None: ...


class RocksStore:
    """RocksDB through ``rocksdict``: bloom filters (a miss reads no data block), no
    compression (float noise does not compress), no write-ahead log (a write is in the
    memtable until it fills, or until :meth:`flush` or :meth:`close` writes it to a table
    file; a crashed process's files are never read again: the worker empties them)."""

    def __init__(self, path: Path) -> None:
        from rocksdict import (
            BlockBasedOptions,
            DBCompressionType,
            Options,
            Rdict,
            WriteBatch,
            WriteOptions,
        )

        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.set_compression_type(DBCompressionType.none())
        table = BlockBasedOptions()
        table.set_bloom_filter(10, False)
        opts.set_block_based_table_factory(table)
        opts.set_max_background_jobs(1)  # the worker's cores are for learning
        # Memtables of 16 MB (RocksDB's default is 64): the profiles memory holds are the
        # hot cache above, not RocksDB's.
        opts.set_write_buffer_size(16 * 2**20)
        self._batch = WriteBatch
        self.db = Rdict(str(path), opts)
        wo = WriteOptions()
        wo.disable_wal = True
        self.db.set_write_options(wo)

    def get(self, key: bytes) -> bytes | None:
        return self.db.get(key)

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        return self.db.get(keys) if keys else []

    def write(self, puts: Sequence[tuple[bytes, bytes]], deletes: Sequence[bytes] = ()) -> None:
        batch = self._batch(raw_mode=True)
        for k, v in puts:
            batch.put(k, v)
        for k in deletes:
            batch.delete(k)
        self.db.write(batch)

    def all_keys(self) -> Iterator[bytes]:
        return iter(self.db.keys())

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(self.db.items())

    def flush(self) -> None:
        self.db.flush(True)

    def close(self) -> None:
        self.db.flush(True)
        self.db.close()


class SqliteStore:
    """SQLite (standard library): one table ``user → value``, WAL, ``synchronous =
    NORMAL``; a batch is one transaction."""

    _IN = 500  # parameters per IN (...) query, under SQLite's limit

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path / "profiles.sqlite", isolation_level=None,
                                  check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS profiles "
                        "(user BLOB PRIMARY KEY, value BLOB NOT NULL)")

    def get(self, key: bytes) -> bytes | None:
        row = self.db.execute("SELECT value FROM profiles WHERE user = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        found: dict[bytes, bytes] = {}
        for lo in range(0, len(keys), self._IN):
            part = keys[lo:lo + self._IN]
            found.update(self.db.execute(
                f"SELECT user, value FROM profiles WHERE user IN ({','.join('?' * len(part))})",
                part))
        return [found.get(k) for k in keys]

    def write(self, puts: Sequence[tuple[bytes, bytes]], deletes: Sequence[bytes] = ()) -> None:
        db = self.db
        db.execute("BEGIN")
        try:
            db.executemany("INSERT OR REPLACE INTO profiles (user, value) VALUES (?, ?)", puts)
            db.executemany("DELETE FROM profiles WHERE user = ?", ((k,) for k in deletes))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def all_keys(self) -> Iterator[bytes]:
        return (k for (k,) in self.db.execute("SELECT user FROM profiles"))

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(self.db.execute("SELECT user, value FROM profiles"))

    def flush(self) -> None:
        self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        self.db.close()


BACKENDS = {"rocksdb": RocksStore, "sqlite": SqliteStore}


def open_backend(backend: str, path: str | os.PathLike[str], fresh: bool = False) -> KeyValue:
    """Open (``fresh``: empty first) the embedded store ``backend`` in directory ``path``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown profile store backend {backend!r}: one of "
                         f"{', '.join(sorted(BACKENDS))}")
    path = Path(path)
    if fresh and path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return BACKENDS[backend](path)


class DiskProfileStore(ProfileStore):
    """A :class:`~learners.profiles.ProfileStore` holding ``capacity`` users in memory and
    the rest on disk in directory ``path`` (see module doc). User ids are strings.

    ``fresh`` empties the directory first; otherwise the profiles written there by a
    closed (or flushed) store are its own.
    """

    def __init__(self, path: str | os.PathLike[str], emb_dim: int = 384, decay: float = 0.9,
                 capacity: int = 100_000, ttl_seconds: float | None = None,
                 backend: str = "rocksdb", fresh: bool = False) -> None:
        super().__init__(emb_dim=emb_dim, decay=decay, capacity=capacity,
                         ttl_seconds=ttl_seconds)
        self.path, self.backend = Path(path), backend
        self._open: KeyValue | None = open_backend(backend, path, fresh=fresh)
        self._size = 16 + 4 * self.emb_dim
        self._row = np.dtype([("w", "<f8"), ("t", "<f8"), ("m", "<f4", (self.emb_dim,))])
        self._dirty: set[Hashable] = set()  # in memory, newer than on disk (or not there)
        self._stored: set[Hashable] = set()  # in memory, and on disk too (maybe older)
        self._disk = sum(1 for _ in self._kv.all_keys())  # users on disk
        self.spills = 0  # profiles written to disk as they left memory
        self.loads = 0  # profiles read back from disk into memory

    def __len__(self) -> int:
        return len(self._users) + self._disk - len(self._stored)

    def __contains__(self, user_id: Hashable) -> bool:
        return user_id in self._users or self._kv.get(_key(user_id)) is not None

    def __repr__(self) -> str:
        return (f"DiskProfileStore(users={len(self)}, in_memory={len(self._users)}/"
                f"{self.capacity}, backend={self.backend}, emb_dim={self.emb_dim}, "
                f"decay={self.decay}, ttl_seconds={self.ttl_seconds}, spills={self.spills})")

    @property
    def _kv(self) -> KeyValue:
        if self._open is None:  # closed, and used again: its files are its own still
            self._open = open_backend(self.backend, self.path)
        return self._open

    @property
    def in_memory(self) -> int:
        """Users whose profiles are held in memory."""
        return len(self._users)

    # -- encoding ---------------------------------------------------------------------------

    def _encode(self, entry: list[Any]) -> bytes:
        mean = np.ascontiguousarray(entry[0], dtype="<f4")
        return np.array([entry[1], entry[2]], dtype="<f8").tobytes() + mean.tobytes()

    def _decode(self, value: bytes) -> list[Any]:
        if len(value) != self._size:
            raise ValueError(f"a stored profile has {len(value)} bytes, not {self._size} "
                             f"(emb_dim {self.emb_dim})")
        wt = np.frombuffer(value, "<f8", 2)
        # Read-only, as the memory store's rows are never written to (see _fold).
        return [np.frombuffer(value, "<f4", self.emb_dim, 16), float(wt[0]), float(wt[1])]

    def _rows(self, means: np.ndarray, weights: Sequence[float],
              last_seen: Sequence[float]) -> list[bytes]:
        rows = np.empty(len(means), dtype=self._row)
        rows["w"], rows["t"], rows["m"] = weights, last_seen, means
        raw, size = rows.tobytes(), self._size
        return [raw[i * size:(i + 1) * size] for i in range(len(rows))]

    # -- the memory store's hooks -------------------------------------------------------------

    def _changed(self, user_id: Hashable) -> None:
        self._dirty.add(user_id)

    def _overflow(self) -> None:
        """Spill the least recently observed profiles beyond ``capacity`` to disk."""
        excess = len(self._users) - self.capacity
        if excess <= 0:
            return
        users, dirty, stored = self._users, self._dirty, self._stored
        puts = []
        for _ in range(excess):
            user_id, entry = users.popitem(last=False)
            if user_id in dirty:
                dirty.discard(user_id)
                puts.append((_key(user_id), self._encode(entry)))
            if user_id in stored:
                stored.discard(user_id)
            else:
                self._disk += 1
        if puts:
            self._kv.write(puts)
            self.spills += len(puts)

    def _live(self, user_id: Hashable, now: float) -> list[Any] | None:
        entry = self._users.get(user_id)
        if entry is None:
            value = self._kv.get(_key(user_id))
            if value is None:
                return None
            entry = self._decode(value)
            if self.ttl_seconds is not None and self._expired(entry, now):
                self._kv.write((), (_key(user_id),))
                self._disk -= 1
                self.expirations += 1
                return None
            self._users[user_id] = entry
            self._stored.add(user_id)
            self.loads += 1
            self._overflow()
            return entry
        if self.ttl_seconds is not None and self._expired(entry, now):
            self._remove([user_id])
            self.expirations += 1
            return None
        return entry

    # -- what the memory store does over its dict, over memory and disk ------------------------

    def _on_disk(self, user_ids: list[Hashable]) -> list[bool]:
        """Whether each of these users (none in memory) has a profile on disk."""
        if self._disk == len(self._stored):  # every profile on disk is in memory too
            return [False] * len(user_ids)
        return [v is not None for v in self._kv.get_many([_key(u) for u in user_ids])]

    def _remove(self, user_ids: Iterable[Hashable]) -> int:
        """Delete these users from memory and disk; returns how many were held."""
        held, deletes, cold = 0, [], []
        for u in dict.fromkeys(user_ids):
            if self._users.pop(u, None) is not None:
                held += 1
                self._dirty.discard(u)
                if u in self._stored:
                    self._stored.discard(u)
                    deletes.append(_key(u))
                    self._disk -= 1
            else:
                cold.append(u)
        if cold:
            for u, there in zip(cold, self._on_disk(cold), strict=True):
                if there:
                    held += 1
                    deletes.append(_key(u))
                    self._disk -= 1
        if deletes:
            self._kv.write((), deletes)
        return held

    def forget(self, user_ids: Iterable[Hashable]) -> int:
        return self._remove(user_ids)

    def drop(self, user_ids: Sequence[Hashable]) -> int:
        return self._remove(user_ids)

    def users(self) -> list[Hashable]:
        """Every user with a profile: those only on disk first, then memory's, least
        recently observed first. Reads every key on disk."""
        hot = self._users
        return [u for u in (k.decode() for k in self._kv.all_keys()) if u not in hot] + list(hot)

    def expire(self, now: float | None = None) -> int:
        """Drop every user idle for more than ``ttl_seconds``, in memory and on disk."""
        if self.ttl_seconds is None:
            return 0
        now = time.time() if now is None else float(now)
        old = [u for u, e in self._users.items() if self._expired(e, now)]
        hot = self._users
        old += [k.decode() for k, v in self._kv.items()
                if k.decode() not in hot and self._expired(self._decode(v), now)]
        dropped = self._remove(old)
        self.expirations += dropped
        return dropped

    def entries(self, user_ids: Sequence[Hashable]
                ) -> tuple[list[Hashable], np.ndarray, np.ndarray, np.ndarray]:
        """As :meth:`ProfileStore.entries`, reading from disk what memory lacks (without
        bringing it into memory)."""
        want = list(dict.fromkeys(user_ids))
        cold = [u for u in want if u not in self._users]
        found = dict(zip(cold, self._kv.get_many([_key(u) for u in cold]), strict=True))
        held = [u for u in want if u in self._users or found.get(u) is not None]
        means = np.zeros((len(held), self.emb_dim), dtype=np.float32)
        weights, last_seen = np.zeros(len(held)), np.zeros(len(held))
        for i, u in enumerate(held):
            entry = self._users.get(u)
            means[i], weights[i], last_seen[i] = entry if entry is not None \
                else self._decode(found[u])
        return held, means, weights, last_seen

    def put(self, user_ids: Sequence[Hashable], means: np.ndarray, weights: np.ndarray,
            last_seen: np.ndarray) -> None:
        """Set these users' profiles (most recent last, a user's last entry winning): the
        most recent ``capacity`` into memory, the others straight to disk."""
        means = np.asarray(means, dtype=np.float32)
        ws = np.asarray(weights, np.float64)
        ts = np.asarray(last_seen, np.float64)
        ids = list(user_ids)
        if not len(ids) == len(means) == len(ws) == len(ts):
            raise ValueError("put: user ids, means, weights and last-seen times differ "
                             "in length")
        last: dict[Hashable, int] = {}
        for i, u in enumerate(ids):
            last.pop(u, None)
            last[u] = i
        order = list(last.values())
        if len(order) != len(ids):
            ids, means, ws, ts = [ids[i] for i in order], means[order], ws[order], ts[order]
        cut = max(0, len(ids) - self.capacity)
        users, dirty, stored = self._users, self._dirty, self._stored
        if cut:  # these would only pass through memory: written to disk at once
            cold, unknown, added = ids[:cut], [], 0
            for u in cold:
                if users.pop(u, None) is None:
                    unknown.append(u)
                else:
                    dirty.discard(u)
                    if u in stored:
                        stored.discard(u)  # on disk already: rewritten below
                    else:
                        added += 1
            added += self._on_disk(unknown).count(False)
            self._kv.write(list(zip(map(_key, cold), self._rows(means[:cut], ws[:cut],
                                                                ts[:cut]), strict=True)))
            self._disk += added
        hot = ids[cut:]
        new = [u for u in hot if u not in users]
        for u, there in zip(new, self._on_disk(new), strict=True):
            if there:
                stored.add(u)
        for u in hot:
            if u in users:
                del users[u]  # re-inserted at the end: most recent last
        users.update(zip(hot, map(list, zip(means[cut:], ws[cut:].tolist(),
                                            ts[cut:].tolist(), strict=True)), strict=True))
        dirty.update(hot)
        self._overflow()

    def put_rows(self, user_ids: Sequence[Hashable], means: Sequence[np.ndarray],
                 weights: Sequence[float], last_seen: Sequence[float]) -> None:
        """As :meth:`put` (memory and disk kept in step; the base class writes memory
        only)."""
        if not len(user_ids):
            return
        self.put(list(user_ids), np.stack([np.asarray(m, np.float32) for m in means]),
                 np.asarray(weights, np.float64), np.asarray(last_seen, np.float64))

    def state(self) -> dict[str, Any]:
        """As :meth:`ProfileStore.state` (every profile, memory and disk: it costs the
        number of users); :meth:`ProfileStore.from_state` gives a memory store back."""
        held, means, weights, last_seen = self.entries(self.users())
        return {
            "config": {"emb_dim": self.emb_dim, "decay": self.decay,
                       "capacity": max(self.capacity, len(held)),
                       "ttl_seconds": self.ttl_seconds},
            "user_ids": held, "means": means, "weights": weights, "last_seen": last_seen,
            "counters": {"evictions": self.evictions, "expirations": self.expirations},
        }

    # -- durability -----------------------------------------------------------------------------

    def flush(self, durable: bool = False) -> int:
        """Write the profiles changed in memory since the last flush to the embedded store
        (``durable``: and on to its files, e.g. RocksDB's memtable to table files); returns
        how many were written (the cost is theirs, not the users').

        Not durable by default: the worker empties the store at start (it is a cache of
        the changelog), so a checkpoint need not wait for the disk; :meth:`close` is."""
        dirty = [u for u in self._users if u in self._dirty] if self._dirty else []
        if dirty:
            users = self._users
            for lo in range(0, len(dirty), _FLUSH_BATCH):  # a bounded copy at a time
                self._kv.write([(_key(u), self._encode(users[u]))
                                for u in dirty[lo:lo + _FLUSH_BATCH]])
            fresh = [u for u in dirty if u not in self._stored]
            self._disk += len(fresh)
            self._stored.update(fresh)
            self._dirty.clear()
        if durable:
            self._kv.flush()
        return len(dirty)

    def close(self) -> None:
        """Flush, and release the files (RocksDB's lock with them); a closed store used
        again opens them again."""
        if self._open is not None:
            self.flush(durable=True)
            self._open.close()
            self._open = None


_FLUSH_BATCH = 4096  # profiles per write when flushing (about 6 MB at 384-d)


def _key(user_id: Hashable) -> bytes:
    if not isinstance(user_id, str):
        raise TypeError(f"a disk profile store keys users by string, got {type(user_id)!r}")
    return user_id.encode()
