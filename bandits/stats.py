"""Additive sufficient statistics of a linear bandit.

For a ridge model over features φ ∈ ℝᵈ the data enter only through::

    XᵀX = Σ φφᵀ   (d, d)      Xᵀr = Σ r·φ   (d,)      n = number of rows

and those sums are additive: statistics of disjoint parts of a stream add up
to the statistics of the whole stream. That is what lets N workers of one
consumer group each learn on their partitions, publish deltas, add everyone
else's, and end with the model one worker would have learnt from all events.

The prior ``λI`` is *not* part of the statistics (each policy adds its own
once), so merging never counts it twice. Statistics carry the id of the
feature space they were computed in and refuse to combine across ids.

:class:`MostPopular` uses the same record with an empty linear part and
per-item reward sums in ``item_counts``.

References
----------
Li, Chu, Langford, Schapire (2010). A contextual-bandit approach to
personalized news article recommendation. WWW.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from bandits.exceptions import FeatureSpaceMismatch, InvalidInput

__all__ = ["SufficientStats"]


@dataclass(frozen=True, eq=False)
class SufficientStats:
    """Additive statistics ``(XᵀX, Xᵀr, n)`` of one feature space, float64.

    Example
    -------
    >>> import numpy as np
    >>> X = np.array([[1.0, 0.0], [0.0, 2.0]]); r = np.array([1.0, 0.5])
    >>> s = SufficientStats.from_batch(X, r, feature_space="fs1")
    >>> t = s + s
    >>> t.n, t.xty.tolist()
    (4, [2.0, 2.0])
    >>> (t - s).allclose(s)
    True
    """

    xtx: np.ndarray
    xty: np.ndarray
    n: int
    feature_space: str
    item_counts: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        xtx = np.array(self.xtx, dtype=np.float64, copy=True)
        xty = np.array(self.xty, dtype=np.float64, copy=True)
        if xtx.ndim != 2 or xtx.shape[0] != xtx.shape[1]:
            raise InvalidInput(f"xtx must be a square matrix, got shape {xtx.shape}")
        if xty.shape != (xtx.shape[0],):
            raise InvalidInput(f"xty must have shape ({xtx.shape[0]},), got {xty.shape}")
        if not isinstance(self.feature_space, str):
            raise InvalidInput("feature_space must be a str")
        if int(self.n) != self.n or self.n < 0:
            raise InvalidInput(f"n must be a non-negative integer, got {self.n!r}")
        object.__setattr__(self, "xtx", xtx)
        object.__setattr__(self, "xty", xty)
        object.__setattr__(self, "n", int(self.n))
        object.__setattr__(self, "item_counts", {str(k): float(v) for k, v in
                                                  self.item_counts.items()})

    @classmethod
    def zeros(cls, dim: int, feature_space: str) -> SufficientStats:
        """Empty statistics of dimension ``dim``."""
        return cls(np.zeros((dim, dim)), np.zeros(dim), 0, feature_space)

    @classmethod
    def from_batch(cls, X: np.ndarray, r: np.ndarray, feature_space: str,
                   gamma: float = 1.0) -> SufficientStats:
        """Statistics of one batch, rows weighted ``γ^(m-1-j)`` (newest row weight 1).

        With ``gamma=1`` this is plainly ``(XᵀX, Xᵀr, m)``.
        """
        X = np.asarray(X, dtype=np.float64)
        r = np.asarray(r, dtype=np.float64)
        m = X.shape[0]
        w = gamma ** np.arange(m - 1, -1, -1, dtype=np.float64) if gamma != 1.0 else None
        Xw = X if w is None else X * w[:, None]
        return cls(Xw.T @ X, Xw.T @ r, m, feature_space)

    @property
    def dim(self) -> int:
        """Feature dimension d (0 for count-only statistics)."""
        return int(self.xty.shape[0])

    def check_compatible(self, other: SufficientStats) -> None:
        """Raise FeatureSpaceMismatch / InvalidInput when ``other`` cannot be combined."""
        if other.feature_space != self.feature_space:
            raise FeatureSpaceMismatch(self.feature_space, other.feature_space)
        if other.dim != self.dim:
            raise InvalidInput(f"statistics dimension mismatch: {self.dim} != {other.dim}")

    def _combine(self, other: SufficientStats, sign: float) -> SufficientStats:
        if not isinstance(other, SufficientStats):
            return NotImplemented
        self.check_compatible(other)
        counts = dict(self.item_counts)
        for key, value in other.item_counts.items():
            counts[key] = counts.get(key, 0.0) + sign * value
        n = self.n + int(sign) * other.n
        if n < 0:
            raise InvalidInput("subtraction would give a negative count")
        return SufficientStats(self.xtx + sign * other.xtx, self.xty + sign * other.xty, n,
                               self.feature_space, counts)

    def __add__(self, other: SufficientStats) -> SufficientStats:
        return self._combine(other, 1.0)

    def __sub__(self, other: SufficientStats) -> SufficientStats:
        """Delta since an earlier snapshot of the same accumulator (for publishing deltas)."""
        return self._combine(other, -1.0)

    def allclose(self, other: SufficientStats, rtol: float = 1e-9, atol: float = 1e-12) -> bool:
        """True when both describe the same data up to floating-point tolerance."""
        if other.feature_space != self.feature_space or other.dim != self.dim:
            return False
        if other.n != self.n or set(other.item_counts) != set(self.item_counts):
            return False
        return bool(
            np.allclose(self.xtx, other.xtx, rtol=rtol, atol=atol)
            and np.allclose(self.xty, other.xty, rtol=rtol, atol=atol)
            and all(np.isclose(v, other.item_counts[k], rtol=rtol, atol=atol)
                    for k, v in self.item_counts.items())
        )

    def __repr__(self) -> str:
        extra = f", items={len(self.item_counts)}" if self.item_counts else ""
        return (f"SufficientStats(dim={self.dim}, n={self.n}, "
                f"feature_space={self.feature_space!r}{extra})")
