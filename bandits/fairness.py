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
than two user groups, max rate 0) are ``nan``. Windowed sums are taken
afresh from a ring of the last N per-slate rows whenever a report is made,
so they carry no floating-point drift however many slates were evicted.

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

Two targets (``target=``): ``"merit"`` (the above, exposure proportional to
estimated merit, FairCo's disparate exposure) and ``"candidates"``, where every
candidate counts as merit 1, so ``M_g`` is the group's count among the request's
candidates and exposure is pushed toward the group's share of the candidates
(demographic parity of exposure, Singh & Joachims 2018). A policy that learns
one group's items are liked less gives them less merit, so the merit target
follows it there; the candidates target does not.

References
----------
Morik, Singh, Hong, Joachims (2020). Controlling fairness and bias in dynamic
learning-to-rank (FairCo). SIGIR.
Singh, Joachims (2018). Fairness of exposure in rankings. KDD.
Järvelin, Kekäläinen (2002). Cumulated gain-based evaluation of IR techniques (DCG weights).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bandits.exceptions import InvalidInput

__all__ = ["BatchSums", "ExposureController", "FairnessReport", "FairnessTracker",
           "popularity_groups", "position_weights"]


def position_weights(k: int) -> np.ndarray:
    """``1/log2(1+j)`` for positions j = 1..k."""
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


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


def _report(slates: int, item_groups: list[str], exposure: np.ndarray, merit: np.ndarray,
            user_groups: list[str], rewards: np.ndarray, shown: np.ndarray) -> FairnessReport:
    """Shares, gaps and reward rates from per-group sums (groups in sorted order)."""
    nan = math.nan
    total_e, total_m = math.fsum(exposure.tolist()), math.fsum(merit.tolist())
    e = {g: float(x) / total_e if total_e > 0 else nan
         for g, x in zip(item_groups, exposure, strict=True)}
    m = {g: float(x) / total_m if total_m > 0 else nan
         for g, x in zip(item_groups, merit, strict=True)}
    gap = {g: e[g] - m[g] for g in item_groups}
    disparity = 0.5 * sum(abs(v) for v in gap.values()) if total_m > 0 and item_groups else nan
    rate = {u: float(r) / float(n) if n > 0 else nan
            for u, r, n in zip(user_groups, rewards, shown, strict=True)}
    finite = [v for v in rate.values() if not math.isnan(v)]
    if len(finite) >= 2:
        hi, lo = max(finite), min(finite)
        rgap, ratio = hi - lo, (lo / hi if hi > 0 else nan)
    else:
        rgap = ratio = nan
    return FairnessReport(slates, e, m, gap, disparity, rate, rgap, ratio)


@dataclass(frozen=True)
class BatchSums:
    """One :meth:`FairnessTracker.observe_batch` call's per-group totals (only groups it
    touched): position-weighted exposure by item group; reward and items shown by user
    group."""

    exposure: dict[str, float]
    rewards: dict[str, float]
    shown: dict[str, float]


class _Table:
    """Per-slate rows by group column: exposure and merit per item group, reward and
    items shown per user group, and whether the slate touched each group."""

    def __init__(self, rows: int) -> None:
        self.exposure = np.zeros((rows, 0))
        self.merit = np.zeros((rows, 0))
        self.item_in = np.zeros((rows, 0), dtype=bool)
        self.rewards = np.zeros((rows, 0))
        self.shown = np.zeros((rows, 0))
        self.user_in = np.zeros((rows, 0), dtype=bool)

    def widen(self, n_items: int, n_users: int) -> None:
        """Grow the group columns (new groups appear rarely)."""
        def grow(a: np.ndarray, n: int) -> np.ndarray:
            return a if a.shape[1] >= n else np.pad(a, ((0, 0), (0, n - a.shape[1])))

        self.exposure, self.merit = grow(self.exposure, n_items), grow(self.merit, n_items)
        self.item_in = grow(self.item_in, n_items)
        self.rewards, self.shown = grow(self.rewards, n_users), grow(self.shown, n_users)
        self.user_in = grow(self.user_in, n_users)


class FairnessTracker:
    """Per-group exposure / merit / reward-rate metrics over a window and cumulatively.

    Each slate becomes one row of per-group sums (exposure and merit per item
    group, reward and items shown per user group); the window is a ring of the
    last ``window`` rows, summed when a report is asked for (exact, no drift),
    and cumulative sums add every row. :meth:`observe_batch` takes many slates
    at once with a few numpy calls, which is what a worker's batched update
    needs: one slate at a time cost more than the policy update itself.

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
        self._items: dict[str, int] = {}  # group name -> column
        self._users: dict[str, int] = {}
        self._ring = _Table(self.window)
        self._head = 0     # next ring row to write
        self._filled = 0   # rows of the ring in use
        self._slates = 0
        self._all = _Table(1)  # cumulative sums, one row

    def observe(self, item_groups: Sequence[str], rewards: Sequence[float] | np.ndarray,
                user_groups: Sequence[str] | str = ()) -> None:
        """Record one slate: item groups by position (best first) and each shown item's reward."""
        self.observe_batch([item_groups], [rewards], [user_groups])

    def observe_batch(self, item_groups: Sequence[Sequence[str]],
                      rewards: Sequence[Sequence[float] | np.ndarray],
                      user_groups: Sequence[Sequence[str] | str]) -> BatchSums:
        """Record ``B`` slates in order, as ``B`` calls of :meth:`observe` would; return the
        batch's own per-group totals."""
        b = len(item_groups)
        if not len(rewards) == len(user_groups) == b:
            raise InvalidInput(f"need one rewards and one user_groups entry per slate ({b}), "
                               f"got {len(rewards)} and {len(user_groups)}")
        if b == 0:
            return BatchSums({}, {}, {})
        sizes = np.fromiter(map(len, item_groups), dtype=np.intp, count=b)
        # One array from all slates' rewards (two numpy calls per slate cost more than the
        # whole bincount below).
        try:
            flat_r = np.fromiter(itertools.chain.from_iterable(rewards), dtype=np.float64)
        except (TypeError, ValueError):  # a scalar or nested entry: reported below
            flat_r = np.full(1, np.nan)
        if flat_r.shape[0] != sizes.sum() or not np.all(np.isfinite(flat_r)):
            bad = next((i for i, (g, r) in enumerate(zip(item_groups, rewards, strict=True))
                        if np.size(r) != len(g)), None)
            raise InvalidInput("rewards must be finite and one per shown item"
                               + (f" (slate {bad}: {len(item_groups[bad])} items, "
                                  f"{np.size(rewards[bad])} rewards)" if bad is not None else ""))
        items, users = self._items, self._users
        item_cols = [items.setdefault(str(g), len(items)) for slate in item_groups for g in slate]
        # A worker's slates repeat a few user-group tuples: columns once per distinct one.
        cols_of: dict[Any, list[int]] = {}
        user_rows, user_cols = [], []
        for i, u in enumerate(user_groups):
            key = u if isinstance(u, str | tuple) else tuple(u)
            cols = cols_of.get(key)
            if cols is None:
                cols = cols_of[key] = [
                    users.setdefault(label, len(users))
                    for label in dict.fromkeys((u,) if isinstance(u, str) else map(str, u))]
            user_rows += [i] * len(cols)
            user_cols += cols
        n_items, n_users = len(items), len(users)
        self._ring.widen(n_items, n_users)
        self._all.widen(n_items, n_users)

        # Per-slate rows: (B, groups) sums by bincount over slate*groups + column.
        slate = np.repeat(np.arange(b), sizes)
        starts = np.cumsum(sizes) - sizes
        position = np.arange(slate.shape[0]) - starts[slate]
        weight = 1.0 / np.log2(position + 2.0)
        cell = slate * n_items + np.asarray(item_cols, dtype=np.intp)
        exposure = np.bincount(cell, weight, b * n_items).reshape(b, n_items)
        merit = np.bincount(cell, flat_r, b * n_items).reshape(b, n_items)
        item_in = np.bincount(cell, None, b * n_items).reshape(b, n_items) > 0
        total = np.bincount(slate, flat_r, b)
        urow = np.asarray(user_rows, dtype=np.intp)
        ucell = urow * n_users + np.asarray(user_cols, dtype=np.intp)
        rewards_u = np.bincount(ucell, total[urow], b * n_users).reshape(b, n_users)
        shown_u = np.bincount(ucell, sizes[urow].astype(np.float64),
                              b * n_users).reshape(b, n_users)
        user_in = np.bincount(ucell, None, b * n_users).reshape(b, n_users) > 0

        batch = (exposure.sum(axis=0), rewards_u.sum(axis=0), shown_u.sum(axis=0))
        in_i, in_u = item_in.any(axis=0), user_in.any(axis=0)
        a = self._all
        a.exposure[0] += batch[0]
        a.merit[0] += merit.sum(axis=0)
        a.item_in[0] |= in_i
        a.rewards[0] += batch[1]
        a.shown[0] += batch[2]
        a.user_in[0] |= in_u
        self._slates += b

        keep = min(b, self.window)  # earlier slates of a long batch are evicted at once
        rows = (self._head + np.arange(keep)) % self.window
        ring = self._ring
        ring.exposure[rows], ring.merit[rows] = exposure[-keep:], merit[-keep:]
        ring.item_in[rows] = item_in[-keep:]
        ring.rewards[rows], ring.shown[rows] = rewards_u[-keep:], shown_u[-keep:]
        ring.user_in[rows] = user_in[-keep:]
        self._head = int((self._head + keep) % self.window)
        self._filled = min(self.window, self._filled + keep)
        touched_i = [(g, c) for g, c in items.items() if in_i[c]]
        touched_u = [(u, c) for u, c in users.items() if in_u[c]]
        return BatchSums({g: float(batch[0][c]) for g, c in touched_i},
                         {u: float(batch[1][c]) for u, c in touched_u},
                         {u: float(batch[2][c]) for u, c in touched_u})

    def _of(self, t: _Table, rows: slice | int, slates: int) -> FairnessReport:
        in_i, in_u = t.item_in[rows].any(axis=0), t.user_in[rows].any(axis=0)
        groups = sorted((g for g, c in self._items.items() if in_i[c]))
        labels = sorted((u for u, c in self._users.items() if in_u[c]))
        gc = [self._items[g] for g in groups]
        uc = [self._users[u] for u in labels]
        return _report(slates, groups, t.exposure[rows][:, gc].sum(axis=0),
                       t.merit[rows][:, gc].sum(axis=0), labels,
                       t.rewards[rows][:, uc].sum(axis=0), t.shown[rows][:, uc].sum(axis=0))

    def window_report(self) -> FairnessReport:
        """Metrics over the last ``window`` slates."""
        return self._of(self._ring, slice(0, self._filled), self._filled)

    def cumulative_report(self) -> FairnessReport:
        """Metrics over every slate observed."""
        return self._of(self._all, slice(0, 1), self._slates)


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
    >>> p = ExposureController(lam=0.5, target="candidates")
    >>> p.observe(["head", "tail", "tail"], shown=[0], merit=np.array([1.0, 0.0, 0.0]))
    >>> p.bonus(["head", "tail"]).round(3).tolist()
    [0.0, 0.333]
    """

    TARGETS = ("merit", "candidates")

    def __init__(self, lam: float = 0.0, target: str = "merit") -> None:
        if not lam >= 0:
            raise InvalidInput(f"lam must be >= 0, got {lam!r}")
        if target not in self.TARGETS:
            raise InvalidInput(f"target must be one of {self.TARGETS}, got {target!r}")
        self.lam = float(lam)
        self.target = target
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

    @property
    def needs_merit(self) -> bool:
        """Whether :meth:`observe` needs the candidates' merit (the merit target)."""
        return self.target == "merit"

    def observe(self, item_groups: Sequence[str], shown: Sequence[int] | np.ndarray,
                merit: Sequence[float] | np.ndarray | None = None) -> None:
        """Account one decision: all candidates' groups, shown indices (ranked), candidate merit.

        ``merit`` is the estimated relevance of each candidate (≥ 0; negatives count as 0),
        e.g. the policy's ``predict`` clipped at 0. With ``target="candidates"`` every
        candidate counts 1 and ``merit`` may be None (given, it is checked, then not used).
        """
        groups = [str(g) for g in item_groups]
        if merit is None:
            if self.needs_merit:
                raise InvalidInput("the merit target needs the candidates' merit")
            merit = np.ones(len(groups))
        m = np.maximum(np.asarray(merit, dtype=np.float64), 0.0)
        idx = np.asarray(shown, dtype=np.intp)
        if m.shape != (len(groups),) or not np.all(np.isfinite(m)):
            raise InvalidInput(f"merit must be {len(groups)} finite values")
        if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= len(groups))):
            raise InvalidInput("shown must be 1-d indices into the candidates")
        if self.target == "candidates":
            m = np.ones(len(groups))
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
        return f"ExposureController(lam={self.lam}, target={self.target!r}, deficit={d})"


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
