"""Per-group fairness metrics and a FairCo-style exposure controller.

Groups are plain strings: item groups (``"head"``/``"tail"``, a provider, a
category) and user groups (``"gender=F"``, ``"age=25-34"``; a user may be in
several).

Metrics (over the last N slates and cumulatively), for a slate whose item at
1-based position j belongs to item group g(j) and earned reward r_j::

    exposure weight  w_j = 1 / log2(1 + j)
    exposure share   e_g = Σ_{j: g(j)=g} w_j / Σ_j w_j
    merit share      m_g = Σ_{j: g(j)=g} r_j / Σ_j r_j          (merit = reward)
    gap              e_g − m_g;   disparity = ½ Σ_g |e_g − m_g|  (total variation, ∈ [0, 1])
    reward rate      ρ_u = Σ rewards / Σ impressions over slates shown to user group u
    largest gap      max_u ρ_u − min_u ρ_u;   ratio = min_u ρ_u / max_u ρ_u

Sums are over the slates in scope. Undefined values (no reward yet, fewer
than two user groups, max rate 0) are ``nan``. Windowed sums are maintained
incrementally (add the new slate, subtract the evicted one) and re-summed
from the window every N evictions to bound floating-point drift.

Controller: :class:`ExposureController` keeps, per item group, the
accumulated exposure deficit relative to the group's merit share::

    D_g ← D_g + (M_g / Σ_h M_h) · Σ_j w_j − E_g          (each observed slate)
    bonus_i = λ · max(0, D_{g(i)})

where ``M_g`` is the summed estimated merit (e.g. predicted relevance) of the
group's candidates in that request and ``E_g`` the group's position-weighted
exposure in the slate. Adding the bonus to scores pushes under-exposed groups
up until exposure tracks merit; λ = 0 is off. Because D accumulates, a
persisting deficit is corrected however small λ is — at a reward cost that
grows with λ (bounded in the tests at ≤ 10 % for the settings used).

References
----------
Morik, Singh, Hong, Joachims (2020). Controlling fairness and bias in dynamic
learning-to-rank (FairCo). SIGIR.
Singh, Joachims (2018). Fairness of exposure in rankings. KDD.
Järvelin, Kekäläinen (2002). Cumulated gain-based evaluation of IR techniques (DCG weights).
"""

from __future__ import annotations

import functools
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from bandits.exceptions import InvalidInput

__all__ = ["ExposureController", "FairnessReport", "FairnessTracker", "popularity_groups",
           "position_weights"]


def position_weights(k: int) -> np.ndarray:
    """``1/log2(1+j)`` for positions j = 1..k."""
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


@functools.lru_cache(maxsize=64)
def _weights(k: int) -> tuple[float, ...]:
    return tuple(position_weights(k).tolist())


@dataclass(frozen=True)
class FairnessReport:
    """Fairness metrics over some scope (a window or everything so far)."""

    slates: int
    exposure_share: dict[str, float]
    merit_share: dict[str, float]
    exposure_merit_gap: dict[str, float]
    disparity: float
    reward_rate: dict[str, float]
    reward_rate_gap: float
    reward_rate_ratio: float


class _Sums:
    """Per-group running sums of one scope, with presence counts for key cleanup."""

    def __init__(self) -> None:
        self.slates = 0
        self.exposure: dict[str, float] = {}
        self.merit: dict[str, float] = {}
        self.rewards: dict[str, float] = {}
        self.impressions: dict[str, float] = {}
        self.item_presence: dict[str, int] = {}
        self.user_presence: dict[str, int] = {}

    def add(self, c: tuple, sign: int) -> None:
        exposure, merit, user_groups, reward, shown = c
        self.slates += sign
        for g in exposure:
            self.exposure[g] = self.exposure.get(g, 0.0) + sign * exposure[g]
            self.merit[g] = self.merit.get(g, 0.0) + sign * merit[g]
            self.item_presence[g] = self.item_presence.get(g, 0) + sign
            if self.item_presence[g] == 0:
                del self.exposure[g], self.merit[g], self.item_presence[g]
        for u in user_groups:
            self.rewards[u] = self.rewards.get(u, 0.0) + sign * reward
            self.impressions[u] = self.impressions.get(u, 0.0) + sign * shown
            self.user_presence[u] = self.user_presence.get(u, 0) + sign
            if self.user_presence[u] == 0:
                del self.rewards[u], self.impressions[u], self.user_presence[u]

    def report(self) -> FairnessReport:
        nan = math.nan
        total_e = sum(self.exposure.values())
        total_m = sum(self.merit.values())
        groups = sorted(self.exposure)
        e = {g: self.exposure[g] / total_e if total_e > 0 else nan for g in groups}
        m = {g: self.merit[g] / total_m if total_m > 0 else nan for g in groups}
        gap = {g: e[g] - m[g] for g in groups}
        disparity = 0.5 * sum(abs(v) for v in gap.values()) if total_m > 0 and groups else nan
        rate = {u: self.rewards[u] / self.impressions[u] if self.impressions[u] > 0 else nan
                for u in sorted(self.rewards)}
        finite = [v for v in rate.values() if not math.isnan(v)]
        if len(finite) >= 2:
            hi, lo = max(finite), min(finite)
            rgap, ratio = hi - lo, (lo / hi if hi > 0 else nan)
        else:
            rgap = ratio = nan
        return FairnessReport(self.slates, e, m, gap, disparity, rate, rgap, ratio)


class FairnessTracker:
    """Incremental per-group exposure / merit / reward-rate metrics.

    Example
    -------
    >>> t = FairnessTracker(window=2)
    >>> t.observe(["head", "tail"], [1.0, 0.0], user_groups=["gender=F"])
    >>> t.observe(["head", "head"], [0.0, 1.0], user_groups=["gender=M"])
    >>> r = t.cumulative_report()
    >>> round(r.exposure_share["tail"], 4), r.merit_share["head"], r.reward_rate["gender=F"]
    (0.1934, 1.0, 0.5)
    """

    def __init__(self, window: int = 1000) -> None:
        if isinstance(window, bool) or int(window) != window or window < 1:
            raise InvalidInput(f"window must be a positive integer, got {window!r}")
        self.window = int(window)
        self._recent: deque[tuple] = deque()
        self._win = _Sums()
        self._all = _Sums()
        self._evictions = 0

    def observe(self, item_groups: Sequence[str], rewards: Sequence[float] | np.ndarray,
                user_groups: Sequence[str] | str = ()) -> None:
        """Record one slate: item groups by position (best first) and each shown item's reward."""
        # Plain Python on purpose: a worker calls this once per closed impression, and for
        # slates of a handful of items numpy's per-call overhead dominates the arithmetic.
        groups = [str(g) for g in item_groups]
        r = [float(x) for x in np.ravel(rewards)] if isinstance(rewards, np.ndarray) \
            else [float(x) for x in rewards]
        if len(r) != len(groups) or not all(math.isfinite(x) for x in r):
            raise InvalidInput(f"rewards must be {len(groups)} finite values, got {len(r)}")
        users = (user_groups,) if isinstance(user_groups, str) else tuple(map(str, user_groups))
        exposure: dict[str, float] = {}
        merit: dict[str, float] = {}
        for g, wj, rj in zip(groups, _weights(len(groups)), r, strict=True):
            exposure[g] = exposure.get(g, 0.0) + wj
            merit[g] = merit.get(g, 0.0) + rj
        c = (exposure, merit, tuple(dict.fromkeys(users)), math.fsum(r), float(len(groups)))
        self._all.add(c, 1)
        self._win.add(c, 1)
        self._recent.append(c)
        if len(self._recent) > self.window:
            self._win.add(self._recent.popleft(), -1)
            self._evictions += 1
            if self._evictions % self.window == 0:  # re-sum to drop accumulated rounding
                self._win = _Sums()
                for old in self._recent:
                    self._win.add(old, 1)

    def window_report(self) -> FairnessReport:
        """Metrics over the last ``window`` slates."""
        return self._win.report()

    def cumulative_report(self) -> FairnessReport:
        """Metrics over every slate observed."""
        return self._all.report()


class ExposureController:
    """FairCo-style exposure controller: ``bonus_i = λ·max(0, D_{g(i)})`` (see module doc).

    Example
    -------
    >>> import numpy as np
    >>> c = ExposureController(lam=0.5)
    >>> groups = ["head", "head", "tail", "tail"]
    >>> c.observe(groups, shown=[0, 1], merit=np.array([1.0, 1.0, 1.0, 1.0]))
    >>> c.bonus(groups).round(3).tolist()
    [0.0, 0.0, 0.408, 0.408]
    """

    def __init__(self, lam: float = 0.0) -> None:
        if not lam >= 0:
            raise InvalidInput(f"lam must be >= 0, got {lam!r}")
        self.lam = float(lam)
        self._deficit: dict[str, float] = {}

    @property
    def deficit(self) -> dict[str, float]:
        """Accumulated exposure deficit per item group (negative = over-exposed)."""
        return dict(self._deficit)

    def bonus(self, item_groups: Sequence[str]) -> np.ndarray:
        """(n,) additive score bonus for candidates with these groups (zeros when λ = 0)."""
        if self.lam == 0.0:
            return np.zeros(len(item_groups))
        return np.array([self.lam * max(0.0, self._deficit.get(str(g), 0.0))
                         for g in item_groups], dtype=np.float64)

    def observe(self, item_groups: Sequence[str], shown: Sequence[int] | np.ndarray,
                merit: Sequence[float] | np.ndarray) -> None:
        """Account one decision: all candidates' groups, shown indices (ranked), candidate merit.

        ``merit`` is the estimated relevance of each candidate (≥ 0; negatives count as 0),
        e.g. the policy's ``predict`` clipped at 0.
        """
        groups = [str(g) for g in item_groups]
        m = np.maximum(np.asarray(merit, dtype=np.float64), 0.0)
        idx = np.asarray(shown, dtype=np.intp)
        if m.shape != (len(groups),) or not np.all(np.isfinite(m)):
            raise InvalidInput(f"merit must be {len(groups)} finite values")
        if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= len(groups))):
            raise InvalidInput("shown must be 1-d indices into the candidates")
        merit_g: dict[str, float] = {}
        for g, v in zip(groups, m.tolist(), strict=True):
            merit_g[g] = merit_g.get(g, 0.0) + v
        total_m = sum(merit_g.values())
        if total_m <= 0 or idx.size == 0:
            return
        w = position_weights(idx.size)
        exposure_g = dict.fromkeys(merit_g, 0.0)
        for j, wj in zip(idx.tolist(), w.tolist(), strict=True):
            exposure_g[groups[j]] += wj
        total_w = float(w.sum())
        for g, mg in merit_g.items():
            self._deficit[g] = self._deficit.get(g, 0.0) + mg / total_m * total_w - exposure_g[g]

    def __repr__(self) -> str:
        d = {g: round(v, 3) for g, v in sorted(self._deficit.items())}
        return f"ExposureController(lam={self.lam}, deficit={d})"


def popularity_groups(counts: Mapping[str, float], head_fraction: float = 0.2, *,
                      head: str = "head", tail: str = "tail") -> dict[str, str]:
    """Label items ``head`` or ``tail`` by interaction count.

    The top ``ceil(head_fraction·n)`` items by count are ``head`` (20 % by default), the
    rest ``tail``. Ties are broken by item id so the split is deterministic.

    Example
    -------
    >>> popularity_groups({"a": 50, "b": 3, "c": 9, "d": 1, "e": 0})
    {'a': 'head', 'c': 'tail', 'b': 'tail', 'd': 'tail', 'e': 'tail'}
    """
    if not 0.0 <= head_fraction <= 1.0:
        raise InvalidInput(f"head_fraction must be in [0, 1], got {head_fraction!r}")
    ranked = sorted(counts, key=lambda i: (-float(counts[i]), str(i)))
    n_head = math.ceil(head_fraction * len(ranked) - 1e-12)
    return {str(i): (head if rank < n_head else tail) for rank, i in enumerate(ranked)}
