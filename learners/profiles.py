"""Streaming user profiles: decayed mean of frozen embeddings of liked items."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np


class ProfileStore:
    """Per-user exponentially decayed mean of the frozen item embeddings they liked.

    Only ``reward > 0`` moves a profile; with rewards ``r_i > 0`` on items
    ``e_i`` (oldest first, ``n`` of them) and decay ``γ``::

        profile = Σ_i γ^(n-i) r_i e_i / Σ_i γ^(n-i) r_i

    It lives in the frozen 384-d space, so it never depends on the adapter and
    survives fine-tunes unchanged. Memory is bounded: at most ``capacity``
    users, least recently observed evicted first; with ``ttl_seconds`` a user
    not observed for that long is forgotten. ``state()`` / ``from_state()``
    carry plain numpy arrays and JSON-able values (no pickle).

    >>> store = ProfileStore(emb_dim=2, decay=0.5, capacity=10)
    >>> store.observe("u1", np.array([1.0, 0.0]), reward=1.0)
    >>> store.observe("u1", np.array([0.0, 1.0]), reward=1.0)
    >>> [round(float(v), 3) for v in store.get("u1")]    # (0.5*[1,0] + [0,1]) / 1.5
    [0.333, 0.667]
    >>> store.get("nobody").tolist()
    [0.0, 0.0]
    """

    def __init__(
        self,
        emb_dim: int = 384,
        decay: float = 0.9,
        capacity: int = 100_000,
        ttl_seconds: float | None = None,
    ) -> None:
        if emb_dim < 1:
            raise ValueError(f"emb_dim must be >= 1, got {emb_dim}")
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if ttl_seconds is not None and ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be > 0 or None, got {ttl_seconds}")
        self.emb_dim = int(emb_dim)
        self.decay = float(decay)
        self.capacity = int(capacity)
        self.ttl_seconds = None if ttl_seconds is None else float(ttl_seconds)
        # user -> [mean (float32), weight Σγ^(n-i) r_i, last_seen]
        self._users: OrderedDict[Hashable, list[Any]] = OrderedDict()
        self._zeros = np.zeros(self.emb_dim, dtype=np.float32)
        self._zeros.setflags(write=False)
        self.evictions = 0
        self.expirations = 0

    def __len__(self) -> int:
        return len(self._users)

    def __contains__(self, user_id: Hashable) -> bool:
        return user_id in self._users

    def __repr__(self) -> str:
        return (
            f"ProfileStore(users={len(self)}/{self.capacity}, emb_dim={self.emb_dim}, "
            f"decay={self.decay}, ttl_seconds={self.ttl_seconds}, evictions={self.evictions})"
        )

    def _expired(self, entry: list[Any], now: float) -> bool:
        return self.ttl_seconds is not None and now - entry[2] > self.ttl_seconds

    def observe(
        self, user_id: Hashable, item_emb: np.ndarray, reward: float, now: float | None = None
    ) -> None:
        """Fold one rewarded item into the user's profile (no-op unless ``reward > 0``).

        ``now`` is the event time in seconds (defaults to the wall clock); it
        drives the TTL and the recency order of the LRU.
        """
        now = time.time() if now is None else float(now)
        entry = self._live(user_id, now)
        reward = float(reward)
        if not reward > 0.0:  # also rejects NaN
            if entry is not None:  # activity keeps the profile warm
                self._touch(user_id, entry, now)
            return
        e = np.asarray(item_emb, dtype=np.float32)
        if e.shape != (self.emb_dim,):
            e = e.reshape(-1)
            if e.shape[0] != self.emb_dim:
                raise ValueError(f"item_emb must have {self.emb_dim} values, got {e.shape[0]}")
        self._fold(user_id, entry, e, reward, now)

    def walk(self, user_ids: Sequence[Hashable], times: Sequence[float],
             rows: Sequence[Sequence[int]], rewards: Sequence[Sequence[float]],
             embeddings: np.ndarray) -> np.ndarray:
        """Each of a batch of impressions' profile before its own feedback, folding that
        feedback in as it goes: ``(B, emb_dim)`` float32.

        Impression ``i`` of user ``user_ids[i]`` at event time ``times[i]`` showed the
        ``embeddings`` rows ``rows[i]`` and got ``rewards[i]``; the result is what
        :meth:`get` and then :meth:`observe` of each positive reward would give, in
        batch order. ``embeddings`` must be float32 rows of ``emb_dim``.
        """
        if embeddings.dtype != np.float32 or embeddings.shape[1:] != (self.emb_dim,):
            raise ValueError(f"embeddings must be float32 rows of {self.emb_dim}, got "
                             f"{embeddings.dtype} {embeddings.shape}")
        before = []
        append, live, fold, zeros = before.append, self._live, self._fold, self._zeros
        for user_id, now, shown, got in zip(user_ids, times, rows, rewards, strict=True):
            entry = live(user_id, now)
            # A reference: _fold replaces a profile's array, never writes to it.
            append(zeros if entry is None else entry[0])
            for row, reward in zip(shown, got, strict=True):
                if reward > 0.0:
                    entry = fold(user_id, entry, embeddings[row], float(reward), now)
        if not before:
            return np.zeros((0, self.emb_dim), dtype=np.float32)
        return np.concatenate(before).reshape(len(before), self.emb_dim)  # one copy, not B

    def _live(self, user_id: Hashable, now: float) -> list[Any] | None:
        """The user's entry, or None when unknown or expired at ``now`` (then forgotten)."""
        entry = self._users.get(user_id)
        if entry is not None and self.ttl_seconds is not None and self._expired(entry, now):
            del self._users[user_id]
            self.expirations += 1
            return None
        return entry

    def _fold(self, user_id: Hashable, entry: list[Any] | None, e: np.ndarray, reward: float,
              now: float) -> list[Any]:
        """Fold a float32 item embedding with ``reward > 0`` into ``entry`` (None: a new
        user); returns the entry."""
        if entry is None:
            entry = self._users[user_id] = [e.copy(), reward, now]
            self._changed(user_id)
            if len(self._users) > self.capacity:
                self._overflow()
            return entry
        entry[0], entry[1] = self._step(entry[0], entry[1], e, reward)
        entry[2] = now
        self._users.move_to_end(user_id)
        self._changed(user_id)
        return entry

    def _step(self, mean: np.ndarray, weight: float, e: np.ndarray,
              reward: float) -> tuple[np.ndarray, float]:
        """One fold: ``(w_old·mean + reward·e) / w_new`` with ``w_old = decay·weight``."""
        w_old = self.decay * weight
        w_new = w_old + reward
        # Weights in float64, vectors in float32 (a Python float keeps a float32 array
        # float32). A new array: views handed out by get() keep the profile they were
        # taken from.
        out = mean * (w_old / w_new)
        out += e * (reward / w_new)
        return out, w_new

    def folded(self, user_id: Hashable, items: Iterable[tuple[np.ndarray, float, float]]
               ) -> tuple[np.ndarray, float, float] | None:
        """The user's ``(mean, weight, last_seen)`` with ``items`` — ``(float32 embedding,
        reward, time)``, oldest first — folded in as :meth:`walk` would (items without
        ``reward > 0`` change nothing), without changing the store; None when the user has
        no profile and no item has ``reward > 0``.

        >>> store = ProfileStore(emb_dim=2, decay=0.5)
        >>> store.observe("u", np.array([1.0, 0.0]), reward=1.0, now=1.0)
        >>> mean, weight, last = store.folded("u", [(np.array([0.0, 1.0], np.float32), 1.0, 2.0)])
        >>> [round(float(v), 3) for v in mean], weight, last, store.get("u").tolist()
        ([0.333, 0.667], 1.5, 2.0, [1.0, 0.0])
        """
        # Through entries(): a store that keeps profiles on disk too reads them there.
        held, means, weights, last_seen = self.entries([user_id])
        mean, weight, last = ((means[0], float(weights[0]), float(last_seen[0])) if held
                              else (None, 0.0, 0.0))
        for e, reward, now in items:
            if not reward > 0.0:
                continue
            if mean is None:
                mean, weight = np.array(e, dtype=np.float32), float(reward)
            else:
                mean, weight = self._step(mean, weight, e, float(reward))
            last = float(now)
        return None if mean is None else (mean, weight, last)

    # Hooks for a store that keeps more than memory holds (learners.profile_disk).

    def _touch(self, user_id: Hashable, entry: list[Any], now: float) -> None:
        """Activity without a positive reward: only the last-seen time moves."""
        entry[2] = now
        self._users.move_to_end(user_id)
        self._changed(user_id)

    def _changed(self, user_id: Hashable) -> None:
        """``user_id``'s entry was created or changed (a disk store marks it dirty)."""

    def _overflow(self) -> None:
        """More than ``capacity`` users are held: evict the least recently observed."""
        while len(self._users) > self.capacity:
            self._users.popitem(last=False)
            self.evictions += 1

    def get(self, user_id: Hashable, now: float | None = None) -> np.ndarray:
        """The user's profile (float32, read-only), zeros when unknown or expired."""
        if self.ttl_seconds is not None:
            now = time.time() if now is None else float(now)
        entry = self._live(user_id, now)
        if entry is None:
            return self._zeros
        out = entry[0].view()
        out.setflags(write=False)
        return out

    def users(self) -> list[Hashable]:
        """Every user with a profile, least recently observed first (a copy)."""
        return list(self._users)

    def forget(self, user_ids: Iterable[Hashable]) -> int:
        """Drop these users' profiles (erasure); returns how many there were."""
        dropped = 0
        for user_id in user_ids:
            if self._users.pop(user_id, None) is not None:
                dropped += 1
        return dropped

    def expire(self, now: float | None = None) -> int:
        """Drop every user idle for more than ``ttl_seconds``; returns how many."""
        if self.ttl_seconds is None:
            return 0
        now = time.time() if now is None else float(now)
        dropped = 0
        while self._users:
            user_id, entry = next(iter(self._users.items()))
            if not self._expired(entry, now):
                break  # LRU order == last-seen order
            del self._users[user_id]
            dropped += 1
        self.expirations += dropped
        return dropped

    def entries(self, user_ids: Sequence[Hashable]
                ) -> tuple[list[Hashable], np.ndarray, np.ndarray, np.ndarray]:
        """The held users among ``user_ids`` with their means (float32), weights and
        last-seen times: what :meth:`put` takes back (e.g. on another process)."""
        held = [u for u in dict.fromkeys(user_ids) if u in self._users]
        means = np.zeros((len(held), self.emb_dim), dtype=np.float32)
        weights, last_seen = np.zeros(len(held)), np.zeros(len(held))
        for i, u in enumerate(held):
            means[i], weights[i], last_seen[i] = self._users[u]
        return held, means, weights, last_seen

    def put(self, user_ids: Sequence[Hashable], means: np.ndarray, weights: np.ndarray,
            last_seen: np.ndarray) -> None:
        """Set these users' profiles as :meth:`entries` gave them (most recent last)."""
        # Rows of one float32 array, not copies: a profile's array is replaced, never
        # written to, when it moves (see _fold).
        means = np.asarray(means, dtype=np.float32)
        users = self._users
        ws = np.asarray(weights, np.float64).tolist()
        ts = np.asarray(last_seen, np.float64).tolist()
        if not len(user_ids) == len(means) == len(ws) == len(ts):
            raise ValueError("put: user ids, means, weights and last-seen times differ "
                             "in length")
        ids = list(user_ids)
        if len(set(ids)) == len(ids):  # the usual case: one dict update (a restore's)
            for u in ids:
                if u in users:
                    del users[u]  # re-inserted at the end: most recent last
            users.update(zip(ids, map(list, zip(means, ws, ts, strict=True)), strict=True))
        else:  # a user twice: its last entry wins and stands last
            move = users.move_to_end
            for u, mean, w, t in zip(ids, means, ws, ts, strict=True):
                users[u] = [mean, w, t]
                move(u)
        self._overflow()

    def flush(self, durable: bool = False) -> int:
        """Write changed profiles to where they are kept: nothing to do in memory (a disk
        store writes them). Returns how many were written."""
        return 0

    def close(self) -> None:
        """Release what the store holds outside the process (nothing, in memory)."""

    def put_rows(self, user_ids: Sequence[Hashable], means: Sequence[np.ndarray],
                 weights: Sequence[float], last_seen: Sequence[float]) -> None:
        """:meth:`put` for profiles that arrive one by one (a server's serving profiles):
        each mean is kept as given, its own float32 array that the caller never writes to
        again, so no batch array outlives the profiles it held (``put`` keeps rows of one
        block, right for a restore, where they live and go together)."""
        users = self._users
        for u, mean, w, t in zip(user_ids, means, weights, last_seen, strict=True):
            mean = np.asarray(mean, dtype=np.float32)
            if mean.shape != (self.emb_dim,):
                raise ValueError(f"profile of {mean.shape} values, want ({self.emb_dim},)")
            users.pop(u, None)
            users[u] = [mean, float(w), float(t)]  # the most recent last
        while len(users) > self.capacity:
            users.popitem(last=False)
            self.evictions += 1

    def drop(self, user_ids: Sequence[Hashable]) -> int:
        """Forget these users (their state moved elsewhere); returns how many were held."""
        held = [u for u in user_ids if u in self._users]
        for u in held:
            del self._users[u]
        return len(held)

    def state(self) -> dict[str, Any]:
        """Checkpointable state: numpy arrays plus JSON-able values, LRU order kept."""
        n = len(self._users)
        means = np.zeros((n, self.emb_dim), dtype=np.float32)
        weights = np.zeros(n, dtype=np.float64)
        last_seen = np.zeros(n, dtype=np.float64)
        for i, entry in enumerate(self._users.values()):
            means[i], weights[i], last_seen[i] = entry
        return {
            "config": {
                "emb_dim": self.emb_dim,
                "decay": self.decay,
                "capacity": self.capacity,
                "ttl_seconds": self.ttl_seconds,
            },
            "user_ids": list(self._users),
            "means": means,
            "weights": weights,
            "last_seen": last_seen,
            "counters": {"evictions": self.evictions, "expirations": self.expirations},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ProfileStore:
        store = cls(**state["config"])
        means = np.asarray(state["means"], dtype=np.float32)
        weights = np.asarray(state["weights"], dtype=np.float64)
        last_seen = np.asarray(state["last_seen"], dtype=np.float64)
        ids = list(state["user_ids"])
        if not (len(ids) == len(means) == len(weights) == len(last_seen)):
            raise ValueError("profile state arrays have inconsistent lengths")
        if means.ndim != 2 or means.shape[1] != store.emb_dim:
            raise ValueError(f"profile state means must be (n, {store.emb_dim})")
        for i, uid in enumerate(ids):
            store._users[uid] = [means[i].copy(), float(weights[i]), float(last_seen[i])]
        counters = state.get("counters", {})
        store.evictions = int(counters.get("evictions", 0))
        store.expirations = int(counters.get("expirations", 0))
        return store
