"""Sticky assignment of users to arms: a keyed hash of the pseudonym, cut by the shares.

    u = int(blake2b(salt ‖ 0x00 ‖ user, 8 bytes)) / 2⁶⁴ ∈ [0, 1)
    arm = the first arm whose cumulative share exceeds u

The same user and salt always give the same ``u``, so assignment is sticky across
requests, servers and restarts; a new salt (a new experiment) re-draws everyone.
Users whose ``u`` falls in a stopped arm's range are served by control
(:meth:`~stream.experiments.config.Experiment.route`): stopping an arm moves no
other user.

>>> from stream.experiments.config import Arm, Experiment
>>> r = Router(Experiment(name="e", arms=[Arm(name="control", share=0.5),
...                                       Arm(name="b", share=0.5)]))
>>> r.arm("user-1") == r.arm("user-1"), r.arm("user-1") in ("control", "b")
(True, True)
"""

from __future__ import annotations

import bisect
import hashlib
import itertools

from stream.experiments.config import Experiment

_SCALE = float(1 << 64)


def unit_hash(salt: str, user: str) -> float:
    """The user's uniform draw in [0, 1) under ``salt``."""
    digest = hashlib.blake2b(f"{salt}\x00{user}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def assign(user: str, salt: str, shares: dict[str, float]) -> str:
    """The arm of ``user`` for ``shares`` (name → share, in the experiment's arm order).

    >>> assign("u", "s", {"a": 1.0, "b": 0.0})
    'a'
    """
    u = unit_hash(salt, user)
    names = list(shares)
    bounds = list(itertools.accumulate(shares.values()))
    return names[min(bisect.bisect_right(bounds, u), len(names) - 1)]


class Router:
    """An experiment's assignment, precomputed: ``arm(user)`` is the arm that serves them
    (the hash range's arm, or control / the winner where that one does not serve)."""

    __slots__ = ("_bounds", "_names", "_salt", "experiment")

    def __init__(self, experiment: Experiment) -> None:
        self.experiment = experiment
        arms = experiment.arms
        self._bounds = list(itertools.accumulate(a.share for a in arms))
        self._names = [experiment.route(a.name) for a in arms]
        self._salt = f"{experiment.key}\x00"

    def arm(self, user: str) -> str:
        digest = hashlib.blake2b((self._salt + user).encode(), digest_size=8).digest()
        u = int.from_bytes(digest, "big") / _SCALE
        i = bisect.bisect_right(self._bounds, u)
        return self._names[i if i < len(self._names) else -1]
