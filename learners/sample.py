"""Deterministic per-partition samples of learnt rows: bottom-k by a hash of each row's id.

One coordinated fine-tune across workers (``docs/scaling.md``) needs, for every events
partition, a sample of its learnt rows that every worker holds identically, whoever
learnt them: the trainer trains on the union of the samples, and every worker recomputes
a partition's statistics in a new feature space from its sample. A reservoir driven by a
random generator is a function of the order rows reached *one* worker; a **bottom-k**
sample is a function of the set of rows alone: keep the ``k`` rows whose hash is
smallest. Each row's hash is fixed by its id (``request_id/item index``), so

* the sample of a partition's first ``n`` rows is the same whichever worker learnt
  them, and whatever batches they came in;
* it is a uniform sample without replacement of those rows (the hash is a keyless
  BLAKE2b, so as uniform as the ids are distinct);
* ``bottom_k(S ∪ R) = bottom_k(S ∪ (R ∩ bottom_k(S ∪ R)))``: a statistics delta needs to
  carry only the rows of its range that are in the sender's sample after the range
  (:meth:`PartitionSample.take_fresh`), and a worker that merges them into its copy
  (:meth:`PartitionSample.offer`) ends with the sender's sample.

Order is by ``(hash, row id)``: a total order, so ties (a 64-bit collision) are decided
the same way everywhere. A row id already held is not offered again (a replayed
impression with the same request id adds nothing), the same rule on every worker.

The hash is not keyed: row ids come from the servers' request ids, and a client that
chose request ids could at most choose which of its own rows are sampled.

>>> s = PartitionSample(capacity=2, emb_dim=1)
>>> s.offer(SampleRows.of(["a", "b", "c"], ["i1", "i2", "i3"], np.zeros((3, 1)),
...                       np.zeros(3), np.zeros(3), np.arange(3.0)))
>>> len(s), sorted(s.rows().row_ids) == sorted(s.rows().row_ids[:2])
(2, True)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from learners.replay import ReplayRows

_PERSON = b"fs-sample-v1"  # BLAKE2b personalisation: these hashes are for sampling only


def row_hashes(row_ids: Sequence[str]) -> np.ndarray:
    """64-bit BLAKE2b of each row id, as ``uint64`` (the sample's order).

    >>> h = row_hashes(["r1/0", "r1/0", "r1/1"])
    >>> h.dtype, bool(h[0] == h[1] != h[2])
    (dtype('uint64'), True)
    """
    blake = hashlib.blake2b
    raw = b"".join(blake(i.encode(), digest_size=8, person=_PERSON).digest() for i in row_ids)
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64)


@dataclass(frozen=True)
class SampleRows:
    """Rows of a sample: what :func:`learners.refit_statistics` and the fine-tune need
    (the item's id, the user's frozen profile, attribute codes, reward), with each row's
    id and hash."""

    hashes: np.ndarray  # (n,) uint64
    row_ids: tuple[str, ...]
    item_ids: tuple[str, ...]
    profiles: np.ndarray  # (n, emb_dim) float32
    gender: np.ndarray  # (n,) int8, -1 unknown
    age: np.ndarray  # (n,) int8, -1 unknown
    rewards: np.ndarray  # (n,) float64

    @classmethod
    def of(cls, row_ids: Sequence[str], item_ids: Sequence[str], profiles: np.ndarray,
           gender: np.ndarray, age: np.ndarray, rewards: np.ndarray,
           hashes: np.ndarray | None = None) -> SampleRows:
        n = len(row_ids)
        out = cls(hashes=row_hashes(row_ids) if hashes is None
                  else np.asarray(hashes, dtype=np.uint64),
                  row_ids=tuple(row_ids), item_ids=tuple(item_ids),
                  profiles=np.asarray(profiles, dtype=np.float32),
                  gender=np.asarray(gender, dtype=np.int8),
                  age=np.asarray(age, dtype=np.int8),
                  rewards=np.asarray(rewards, dtype=np.float64))
        if not (len(out.hashes) == len(out.item_ids) == len(out.profiles) == len(out.gender)
                == len(out.age) == len(out.rewards) == n) or out.profiles.ndim != 2:
            raise ValueError("sample rows: every field needs one entry per row")
        return out

    @classmethod
    def empty(cls, emb_dim: int) -> SampleRows:
        return cls.of([], [], np.zeros((0, emb_dim), np.float32), np.zeros(0), np.zeros(0),
                      np.zeros(0))

    def __len__(self) -> int:
        return len(self.row_ids)

    def take(self, index: np.ndarray) -> SampleRows:
        index = np.asarray(index, dtype=np.intp)
        return SampleRows(self.hashes[index], tuple(self.row_ids[i] for i in index),
                          tuple(self.item_ids[i] for i in index), self.profiles[index],
                          self.gender[index], self.age[index], self.rewards[index])

    def arrays(self) -> dict[str, np.ndarray]:
        """The numeric fields (what a delta or a checkpoint stores as arrays)."""
        return {"hashes": self.hashes, "profiles": self.profiles, "gender": self.gender,
                "age": self.age, "rewards": self.rewards}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], row_ids: Sequence[str],
                    item_ids: Sequence[str]) -> SampleRows:
        return cls.of(row_ids, item_ids, arrays["profiles"], arrays["gender"], arrays["age"],
                      arrays["rewards"], hashes=arrays["hashes"])


class PartitionSample:
    """The bottom-``capacity`` sample (module doc) of one partition's learnt rows.

    An offer in which no row can enter (every hash above the largest held, once the
    sample is full: most offers of a long stream) costs the hashes' comparison only;
    one in which rows enter copies the held rows once. :meth:`rows` gives them in
    ``(hash, id)`` order. ``fresh`` marks rows that entered since the last :meth:`take_fresh` (the
    owner's: what its next delta carries)."""

    def __init__(self, capacity: int, emb_dim: int) -> None:
        if capacity < 1:
            raise ValueError(f"sample capacity must be >= 1, got {capacity}")
        self.capacity, self.emb_dim = int(capacity), int(emb_dim)
        self._rows = SampleRows.empty(emb_dim)
        self._fresh = np.zeros(0, dtype=bool)
        self._held: set[str] = set()

    def __len__(self) -> int:
        return len(self._rows)

    def threshold(self) -> int | None:
        """The largest hash held once the sample is full (a row above it cannot enter),
        None before."""
        return int(self._rows.hashes.max()) if len(self._rows) >= self.capacity else None

    def offer(self, rows: SampleRows, fresh: bool = False) -> None:
        """Merge ``rows``: keep the ``capacity`` smallest by ``(hash, id)`` of what is held
        and what is offered (an id already held, or repeated in ``rows``, counts once:
        its first copy)."""
        if not len(rows):
            return
        keep, ids = [], set()
        for i, row_id in enumerate(rows.row_ids):
            if row_id not in self._held and row_id not in ids:
                ids.add(row_id)
                keep.append(i)
        held = self._rows
        if len(held) >= self.capacity:  # only rows below the largest held can enter
            top = held.hashes.max()
            keep = [i for i in keep if rows.hashes[i] <= top]
        if not keep:
            return
        new = rows.take(np.array(keep))
        hashes = np.concatenate([held.hashes, new.hashes])
        ids_all = held.row_ids + new.row_ids
        order = np.lexsort((np.array(ids_all, dtype=object).astype(str), hashes)) \
            if _ties(hashes) else np.argsort(hashes, kind="stable")
        chosen = np.sort(order[:self.capacity])
        merged = _concat(held, new).take(chosen)
        self._fresh = np.concatenate([self._fresh, np.full(len(new), fresh)])[chosen]
        self._rows = merged
        self._held = set(merged.row_ids)

    def rows(self) -> SampleRows:
        """Every row held, in ``(hash, id)`` order (a copy)."""
        r = self._rows
        return r.take(np.lexsort((np.array(r.row_ids, dtype=object).astype(str), r.hashes))
                      if len(r) else np.zeros(0, dtype=np.intp))

    def take_fresh(self) -> SampleRows:
        """The rows that entered since the last call (in ``(hash, id)`` order); none are
        fresh after it."""
        index = np.flatnonzero(self._fresh)
        out = self._rows.take(index)
        self._fresh[:] = False
        return out.take(np.lexsort((np.array(out.row_ids, dtype=object).astype(str),
                                    out.hashes)) if len(out) else np.zeros(0, np.intp))

    # -- checkpoints ----------------------------------------------------------------------

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        r = self._rows
        return ({"row_ids": list(r.row_ids), "item_ids": list(r.item_ids)},
                {**r.arrays(), "fresh": self._fresh.copy()})

    @classmethod
    def from_state(cls, capacity: int, emb_dim: int, header: dict[str, Any],
                   arrays: dict[str, np.ndarray]) -> PartitionSample:
        s = cls(capacity, emb_dim)
        s._rows = SampleRows.from_arrays(arrays, header["row_ids"], header["item_ids"])
        s._fresh = np.asarray(arrays["fresh"], dtype=bool).copy()
        s._held = set(s._rows.row_ids)
        if len(s._fresh) != len(s._rows):
            raise ValueError("sample state: fresh flags do not match the rows")
        return s


def _ties(hashes: np.ndarray) -> bool:
    return len(np.unique(hashes)) != len(hashes)


def _concat(a: SampleRows, b: SampleRows) -> SampleRows:
    return SampleRows(np.concatenate([a.hashes, b.hashes]), a.row_ids + b.row_ids,
                      a.item_ids + b.item_ids, np.concatenate([a.profiles, b.profiles]),
                      np.concatenate([a.gender, b.gender]), np.concatenate([a.age, b.age]),
                      np.concatenate([a.rewards, b.rewards]))


def replay_rows(rows: SampleRows, embeddings: np.ndarray,
                index: dict[str, int]) -> ReplayRows:
    """Sample rows as :class:`~learners.replay.ReplayRows` (what a fine-tune trains on and
    :func:`~learners.refit.refit_statistics` maps into a feature space), with each item's
    frozen embedding and catalog row (``index``: item id → row of ``embeddings``)."""
    item_rows = np.fromiter((index[i] for i in rows.item_ids), dtype=np.int64,
                            count=len(rows))
    return ReplayRows(np.asarray(embeddings[item_rows], dtype=np.float32), rows.profiles,
                      rows.gender, rows.age, rows.rewards,
                      np.arange(len(rows), dtype=np.int64), item_rows)
