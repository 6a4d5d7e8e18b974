"""Impression discounting: items a user was just shown and did not click rank lower next time.

A published policy changes every few hundred learned rows, but a user's session
moves faster than that: without this, the same stale policy shows a user the
same ignored items request after request. Serving remembers, per user, the
items it showed and that have not been clicked, and subtracts ``strength``
from their scores for ``ttl_s`` seconds (a deterministic score offset, like the
exposure bonus, so propensities stay exact). A click (or purchase) on an item
clears it. Production recommenders do the same (Lee et al. 2014, "impression
discounting"); what it is worth depends on how reliably a non-click means "not
interested": in the MovieLens simulations a rating does not change, so there it
is worth the most (``fairstream eval sim`` shows it with and without).

Bounded: at most ``per_user`` items per user (the oldest impression dropped
first) and ``max_users`` users (the least recently active dropped first).
What is remembered is per process: several servers each discount what they
showed (route a user's requests to one server to share it).

References
----------
Lee, Lin, Tseng, Chen, Chen (2014). Modeling impression discounting in
large-scale recommender systems. KDD.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from stream.settings import Settings

__all__ = ["RecentImpressions", "recent_impressions"]


class RecentImpressions:
    """Per-user memory of shown, not-clicked items and the score offsets they earn.

    Example
    -------
    >>> r = RecentImpressions(strength=1.0, ttl_s=60.0)
    >>> r.shown("u1", ["a", "b"], now=0.0)
    >>> r.clicked("u1", "b")
    >>> r.penalties("u1", ["a", "b", "c"], now=30.0).tolist()
    [-1.0, 0.0, 0.0]
    >>> r.penalties("u1", ["a"], now=61.0) is None  # expired
    True
    """

    def __init__(self, strength: float = 1.0, ttl_s: float = 86_400.0, per_user: int = 50,
                 max_users: int = 20_000) -> None:
        if not strength >= 0:
            raise ValueError(f"strength must be >= 0, got {strength!r}")
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s!r}")
        if per_user < 1 or max_users < 1:
            raise ValueError("per_user and max_users must be >= 1")
        self.strength, self.ttl_s = float(strength), float(ttl_s)
        self.per_user, self.max_users = int(per_user), int(max_users)
        self._users: OrderedDict[str, OrderedDict[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._users)

    def __repr__(self) -> str:
        return (f"RecentImpressions(strength={self.strength}, ttl_s={self.ttl_s}, "
                f"users={len(self._users)}/{self.max_users}, per_user={self.per_user})")

    @property
    def enabled(self) -> bool:
        return self.strength > 0

    def shown(self, user_id: str, items: Iterable[str], now: float) -> None:
        """Remember that ``items`` were shown to ``user_id`` at ``now`` (seconds)."""
        if not self.enabled:
            return
        with self._lock:
            seen = self._users.get(user_id)
            if seen is None:
                seen = self._users[user_id] = OrderedDict()
                if len(self._users) > self.max_users:
                    self._users.popitem(last=False)
            else:
                self._users.move_to_end(user_id)
            for item in items:
                seen[item] = now
                seen.move_to_end(item)
            while len(seen) > self.per_user:
                seen.popitem(last=False)

    def clicked(self, user_id: str, item: str) -> None:
        """The user clicked (or bought) ``item``: it is no longer discounted."""
        with self._lock:
            seen = self._users.get(user_id)
            if seen is not None:
                seen.pop(item, None)

    def users(self) -> list[str]:
        """The users something is remembered about (for erasure)."""
        with self._lock:
            return list(self._users)

    def forget(self, user_id: str) -> None:
        """Drop everything remembered about ``user_id``."""
        with self._lock:
            self._users.pop(user_id, None)

    def penalties(self, user_id: str, items: Sequence[str], now: float,
                  index: Mapping[str, int] | None = None) -> np.ndarray | None:
        """``(n,)`` score offsets (``-strength`` for a recent unclicked impression), or None
        when nothing applies (the caller then adds nothing). ``index`` (item → position
        in ``items``), when the caller has one, saves a pass over a long ``items``."""
        seen = self._users.get(user_id)
        if not seen or not self.enabled:
            return None
        since = now - self.ttl_s
        with self._lock:
            if index is not None:
                hit = [index[i] for i, t in seen.items() if t > since and i in index]
            else:
                hit = [j for j, item in enumerate(items) if seen.get(item, since) > since]
        if not hit:
            return None
        out = np.zeros(len(items))
        out[hit] = -self.strength
        return out


def recent_impressions(settings: Settings) -> RecentImpressions | None:
    """The ``[serve]`` impression discount as configured, or None when it is off."""
    sv = settings.serve
    if sv.impression_discount == 0:
        return None
    return RecentImpressions(sv.impression_discount, sv.impression_discount_ttl_s,
                             sv.impression_discount_items, sv.impression_discount_users)
