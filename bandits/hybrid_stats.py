"""Additive statistics of the hybrid model: a shared part plus per-item blocks.

For rows (φ, z, r, item a) — φ ∈ ℝᵈ the full feature vector, z ∈ ℝᵏ the small
user context (columns of φ, or the constant 1) — the hybrid ridge model needs::

    shared      XᵀX = Σ φφᵀ  (d, d)     Xᵀr = Σ rφ  (d,)     n
    item a      B_a = Σ_a zφᵀ (k, d)    c_a = Σ_a rz (k,)     n_a

``Z_a = Σ_a zzᵀ`` is not stored: it is ``B_a[:, z_index]`` when z is made of
columns of φ, and ``[[n_a]]`` for the bias-only z. All of it is additive, so
statistics of disjoint parts of a stream add up to those of the whole stream
(per-item blocks add item by item). Like :class:`SufficientStats`, the prior
λI is not included and feature spaces never mix; the z layout must match too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bandits.exceptions import InvalidInput
from bandits.stats import SufficientStats

__all__ = ["HybridStats", "check_z"]

ZSpec = str | tuple[int, ...]


def check_z(z: object, dim: int) -> ZSpec:
    """Normalise a z layout: ``"bias"`` or distinct column indices of φ (a tuple)."""
    if isinstance(z, str):
        if z != "bias":
            raise InvalidInput(f"z must be 'bias' or a list of column indices, got {z!r}")
        return "bias"
    try:
        cols = tuple(z)  # type: ignore[call-overload]
    except TypeError:
        raise InvalidInput(f"z must be 'bias' or a list of column indices, got {z!r}") from None
    if not cols or any(isinstance(c, bool) or not isinstance(c, int | np.integer)
                       or not 0 <= c < dim for c in cols):
        raise InvalidInput(f"z columns must be a non-empty list of ints in [0, {dim}), got {z!r}")
    if len(set(cols)) != len(cols):
        raise InvalidInput(f"z columns must be distinct, got {list(cols)}")
    return tuple(int(c) for c in cols)


def item_sums(X: np.ndarray, r: np.ndarray, Z: np.ndarray, group: np.ndarray,
              groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group ``g``: ``(Σ z_i x_iᵀ, Σ z_i r_i, count)`` over the rows ``i`` of ``g``
    (``Z``: the rows' z, ``(n, k)``; ``group``: each row's group in ``range(groups)``).

    One sparse product ``S @ X`` with ``S[g·k + j, i] = z_ij`` for row ``i`` of group
    ``g``: no ``(rows, k, d)`` outer products in memory and no per-group reduction (a
    ``reduceat`` over them cost about ten times as much).

    >>> X, r = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), np.array([1.0, 0.0, 1.0])
    >>> B, c, n = item_sums(X, r, X[:, :1], np.array([0, 1, 0]), 2)
    >>> B.tolist(), c.tolist(), n.tolist()
    ([[[26.0, 32.0]], [[9.0, 12.0]]], [[6.0], [0.0]], [2.0, 1.0])
    """
    from scipy.sparse import csc_matrix

    n, d = X.shape
    k = Z.shape[1]
    rows = (group[:, None] * k + np.arange(k)).ravel()
    S = csc_matrix((Z.ravel(), rows, np.arange(0, n * k + 1, k)), shape=(groups * k, n))
    return ((S @ X).reshape(groups, k, d), (S @ r).reshape(groups, k),
            np.bincount(group, minlength=groups).astype(np.float64))


@dataclass(frozen=True, eq=False)
class HybridStats(SufficientStats):
    """:class:`SufficientStats` of the shared part plus per-item blocks ``(B_a, c_a, n_a)``.

    Example
    -------
    >>> import numpy as np
    >>> X = np.array([[1.0, 2.0], [0.0, 1.0]]); r = np.array([1.0, 0.0])
    >>> s = HybridStats.from_rows(X, r, ["a", "b"], z="bias", feature_space="fs")
    >>> t = s + s
    >>> t.n, t.item_ids, t.item_n.tolist(), t.item_xz[0].tolist()
    (4, ('a', 'b'), [2.0, 2.0], [[2.0, 4.0]])
    """

    z: ZSpec = "bias"
    item_ids: tuple[str, ...] = ()
    item_xz: np.ndarray = field(default_factory=lambda: np.zeros((0, 1, 0)))
    item_zr: np.ndarray = field(default_factory=lambda: np.zeros((0, 1)))
    item_n: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        super().__post_init__()
        d = self.dim
        z = check_z(self.z, d)
        k = 1 if z == "bias" else len(z)
        ids = tuple(self.item_ids)
        if any(not isinstance(i, str) for i in ids) or len(set(ids)) != len(ids):
            raise InvalidInput("item_ids must be distinct str")
        u = len(ids)
        xz = np.array(self.item_xz, dtype=np.float64, copy=True).reshape(-1, k, d) \
            if np.size(self.item_xz) == u * k * d else None
        zr = np.array(self.item_zr, dtype=np.float64, copy=True)
        cnt = np.array(self.item_n, dtype=np.float64, copy=True)
        if xz is None or zr.shape != (u, k) or cnt.shape != (u,):
            raise InvalidInput(f"item blocks must have shapes ({u}, {k}, {d}), ({u}, {k}), "
                               f"({u},); got {np.shape(self.item_xz)}, {zr.shape}, {cnt.shape}")
        if np.any(cnt < 0) or np.any(cnt != np.round(cnt)):
            raise InvalidInput("item counts must be non-negative integers")
        for name, value in (("z", z), ("item_ids", ids), ("item_xz", xz), ("item_zr", zr),
                            ("item_n", cnt)):
            object.__setattr__(self, name, value)

    @property
    def z_dim(self) -> int:
        return 1 if self.z == "bias" else len(self.z)

    @classmethod
    def empty(cls, dim: int, z: object, feature_space: str) -> HybridStats:
        z = check_z(z, dim)
        k = 1 if z == "bias" else len(z)
        return cls(np.zeros((dim, dim)), np.zeros(dim), 0, feature_space, z=z,
                   item_xz=np.zeros((0, k, dim)), item_zr=np.zeros((0, k)))

    @classmethod
    def from_rows(cls, X: np.ndarray, r: np.ndarray, item_ids: list[str], z: object,
                  feature_space: str) -> HybridStats:
        """Statistics of one batch of rows (ids in order of first appearance)."""
        X = np.asarray(X, dtype=np.float64)
        r = np.asarray(r, dtype=np.float64)
        z = check_z(z, X.shape[1])
        Z = np.ones((X.shape[0], 1)) if z == "bias" else X[:, list(z)]
        ids = list(dict.fromkeys(item_ids))
        pos = {i: j for j, i in enumerate(ids)}
        inv = np.array([pos[i] for i in item_ids], dtype=np.intp)
        xz = np.zeros((len(ids), Z.shape[1], X.shape[1]))
        zr = np.zeros((len(ids), Z.shape[1]))
        np.add.at(xz, inv, Z[:, :, None] * X[:, None, :])
        np.add.at(zr, inv, Z * r[:, None])
        cnt = np.bincount(inv, minlength=len(ids)).astype(np.float64)
        return cls(X.T @ X, X.T @ r, X.shape[0], feature_space, z=z, item_ids=tuple(ids),
                   item_xz=xz, item_zr=zr, item_n=cnt)

    def check_compatible(self, other: SufficientStats) -> None:
        super().check_compatible(other)
        if isinstance(other, HybridStats) and other.z != self.z:
            raise InvalidInput(f"z layout mismatch: {self.z!r} != {other.z!r}")

    def _combine(self, other: SufficientStats, sign: float) -> SufficientStats:
        if not isinstance(other, HybridStats):
            return NotImplemented
        self.check_compatible(other)
        n = self.n + int(sign) * other.n
        if n < 0:
            raise InvalidInput("subtraction would give a negative count")
        ids = list(self.item_ids)
        pos = {i: j for j, i in enumerate(ids)}
        extra = [i for i in other.item_ids if i not in pos]
        if extra and sign < 0:
            raise InvalidInput(f"cannot subtract blocks of items this has not got: {extra[:3]}")
        for i in extra:
            pos[i] = len(ids)
            ids.append(i)
        k, d, u = self.z_dim, self.dim, len(ids)
        xz, zr, cnt = np.zeros((u, k, d)), np.zeros((u, k)), np.zeros(u)
        mine = np.arange(len(self.item_ids))
        xz[mine], zr[mine], cnt[mine] = self.item_xz, self.item_zr, self.item_n
        theirs = np.array([pos[i] for i in other.item_ids], dtype=np.intp)
        xz[theirs] += sign * other.item_xz
        zr[theirs] += sign * other.item_zr
        cnt[theirs] += sign * other.item_n
        if np.any(cnt < 0):
            raise InvalidInput("subtraction would give a negative item count")
        return HybridStats(self.xtx + sign * other.xtx, self.xty + sign * other.xty, n,
                           self.feature_space, z=self.z, item_ids=tuple(ids), item_xz=xz,
                           item_zr=zr, item_n=cnt)

    def allclose(self, other: SufficientStats, rtol: float = 1e-9, atol: float = 1e-12) -> bool:
        if not isinstance(other, HybridStats) or other.z != self.z:
            return False
        if not super().allclose(other, rtol, atol) or set(other.item_ids) != set(self.item_ids):
            return False
        pos = {i: j for j, i in enumerate(other.item_ids)}
        order = np.array([pos[i] for i in self.item_ids], dtype=np.intp)
        return bool(np.allclose(self.item_xz, other.item_xz[order], rtol=rtol, atol=atol)
                    and np.allclose(self.item_zr, other.item_zr[order], rtol=rtol, atol=atol)
                    and np.array_equal(self.item_n, other.item_n[order]))

    def __repr__(self) -> str:
        return (f"HybridStats(dim={self.dim}, z={self.z!r}, n={self.n}, "
                f"items={len(self.item_ids)}, feature_space={self.feature_space!r})")
