"""Erasure: forgetting a user everywhere the system keeps state about them.

``fairstream forget USER_ID`` (or ``POST /admin/forget``) publishes one marker per
pseudonym the user has (current key and previous ones) on the compacted topic
``fairstream.erasure``. The marker names the user by a token, not by the pseudonym,
so the topic that must keep markers for ever keeps no pseudonym::

    token(p) = hex(SHA-256("fairstream-erasure-v1\\0" ‖ utf8(p)))      key of the record
    value    = {"v": 1, "erased_at": <unix seconds>}

Whoever holds state under pseudonyms (workers, servers) reads every marker, finds the
pseudonyms whose token matches, and drops their profiles and open impressions. An event
of an erased user stamped at or before ``erased_at`` is never learnt again, so a worker
that restores an older checkpoint and replays the events topic does not rebuild what was
erased; events after ``erased_at`` are a returning user's new activity.

Markers are never deleted (no Kafka tombstone): a worker restoring later from an old
checkpoint needs them. The token reveals nothing without the pseudonym it hashes.

>>> marks = Erasures()
>>> marks.add(token("p1-aa"), erased_at=100.0), marks.add(token("p1-aa"), erased_at=100.0)
(True, False)
>>> marks.blocks("p1-aa", ts=99.0), marks.blocks("p1-aa", ts=101.0), marks.blocks("p1-bb", 1.0)
(True, False, False)
>>> decode_marker(encode_marker(100.0))
100.0
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from stream.core.join import Pending, RewardJoiner
from stream.exceptions import InvalidEvent

if TYPE_CHECKING:  # profiles are handed in; nothing here builds one
    from learners.profiles import ProfileStore

_DOMAIN = b"fairstream-erasure-v1\0"


@functools.lru_cache(maxsize=65_536)
def token(pseudonym: str) -> str:
    """The erasure token of a pseudonym (the erasure topic's key)."""
    return hashlib.sha256(_DOMAIN + pseudonym.encode("utf-8")).hexdigest()


def encode_marker(erased_at: float) -> bytes:
    return json.dumps({"v": 1, "erased_at": float(erased_at)}).encode()


def decode_marker(value: bytes | None) -> float:
    """``erased_at`` of a marker's value; :class:`InvalidEvent` if it is not one."""
    try:
        obj = json.loads(value) if value is not None else None
        erased_at = float(obj["erased_at"]) if isinstance(obj, dict) and obj.get("v") == 1 \
            else math.nan
    except (ValueError, TypeError, KeyError):
        erased_at = math.nan
    if not math.isfinite(erased_at):
        raise InvalidEvent("invalid_field", "not an erasure marker")
    return erased_at


@dataclass
class Forgotten:
    """What one erasure pass dropped."""

    profiles: int = 0
    open_impressions: int = 0
    users: list[str] = field(default_factory=list)  # whose profiles were dropped
    markers: int = 0  # new erasure markers this pass applied (0: nothing new to forget)

    def __bool__(self) -> bool:
        return bool(self.profiles or self.open_impressions)


class Erasures:
    """Every erasure marker seen: token → erased_at (the latest, if a user asked twice)."""

    def __init__(self) -> None:
        self._at: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._at)

    def __repr__(self) -> str:
        return f"Erasures({len(self)} users)"

    def add(self, tok: str, erased_at: float) -> bool:
        """Record a marker; True if it is new or later than the one held."""
        if self._at.get(tok, -math.inf) >= erased_at:
            return False
        self._at[tok] = erased_at
        return True

    def erased(self, user_ids: Iterable[str]) -> set[str]:
        """Those of ``user_ids`` (pseudonyms) with a marker."""
        at = self._at
        return {u for u in user_ids if token(u) in at} if at else set()

    def blocks(self, user_id: str, ts: float) -> bool:
        """Whether an event of ``user_id`` at event time ``ts`` predates its erasure."""
        if not self._at:
            return False
        erased_at = self._at.get(token(user_id))
        return erased_at is not None and ts <= erased_at

    def forget(self, profiles: ProfileStore, joiner: RewardJoiner | None = None) -> Forgotten:
        """Drop the profiles of every erased user, and their open impressions that predate
        the erasure. Conservative: a profile a user built after being forgotten goes too
        (a profile does not say when each of its parts was learnt)."""
        out = Forgotten()
        if self._at:
            gone = sorted(self.erased(profiles.users()))
            out.profiles = profiles.forget(gone)
            out.users = gone
            if joiner is not None:
                out.open_impressions = joiner.drop_if(lambda p: self.blocks(p.user_id, p.ts))
        return out

    def screen(self, closed: list[Pending]) -> list[Pending]:
        """``closed`` without the impressions of erased users that predate the erasure."""
        if not self._at:
            return closed
        return [p for p in closed if not self.blocks(p.user_id, p.ts)]
