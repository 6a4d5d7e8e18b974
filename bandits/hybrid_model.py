"""Exact hybrid ridge regression: a shared β over φ plus a θ_a per item over z.

Model ``r ≈ φᵀβ + zᵀθ_a`` with ridge λ on every coefficient. The joint normal
equations have an arrow shape, so β comes from the Schur complement::

    A₀ = λI + Σφφᵀ,  b₀ = Σrφ,  A_a = λI + Z_a,  B_a = Σ_a zφᵀ,  c_a = Σ_a rz
    Ã = A₀ − Σ_a B_aᵀA_a⁻¹B_a          b̃ = b₀ − Σ_a B_aᵀA_a⁻¹c_a
    β = Ã⁻¹b̃                          θ_a = A_a⁻¹(c_a − B_aβ)

``Ã`` and ``b̃`` are kept incrementally: touching item a subtracts its old
term ``B_aᵀA_a⁻¹B_a`` and adds the new one (Li et al. 2010, Algorithm 2).
``Ã⁻¹`` is refactorised from ``Ã`` by Cholesky whenever ``Ã`` changed and a
score needs it (so no rank-one drift accumulates); :meth:`recompute` rebuilds
``Ã`` and ``b̃`` from the raw statistics. Per item only ``B_a`` (k×d), ``c_a``,
``n_a`` and the cached ``A_a⁻¹`` (k×k) are held; ``Z_a`` is ``B_a[:, z]``
(z ⊂ columns of φ) or ``[[n_a]]`` (bias-only z).

Bounded memory: at most ``max_items`` blocks. A new item arriving at the cap
evicts the least-recently-updated block (an ordered map, so no ties). The
evicted item's rows stay in the shared statistics; its block leaves the
system (its term is added back to Ã), so the solution is the exact joint
ridge of the rows with the blocks still held — an evicted or never-seen item
has ``θ_a`` at its prior, 0, and is scored by ``φᵀβ`` alone. A batch is
applied at once when that equals applying its rows one by one, else row by
row. A merge stamps incoming blocks in order of ``(incoming n_a, id)``, so at
the cap the items with the most incoming rows survive, deterministically.

Limits: no forgetting (γ = 1 only); ``Ã⁻¹`` costs O(d³) after each change, so
interleaving single updates with scoring costs one Cholesky per score.

References
----------
Li, Chu, Langford, Schapire (2010). A contextual-bandit approach to
personalized news article recommendation. WWW (Algorithm 2, hybrid LinUCB).
"""

from __future__ import annotations

import itertools
import sys
from collections import OrderedDict
from typing import Any

import numpy as np

from bandits.exceptions import InvalidInput
from bandits.hybrid_stats import HybridStats, check_z, item_sums
from bandits.stats import SufficientStats

__all__ = ["HybridModel"]

_CHUNK = 1 << 14  # items per block of the vectorised Σ B_aᵀA_a⁻¹B_a


class HybridModel:
    """Statistics and exact solution of the hybrid ridge model (see module docstring).

    Example
    -------
    >>> import numpy as np
    >>> m = HybridModel(dim=2, z="bias", lam=1.0, max_items=10, feature_space="fs")
    >>> m.update(np.array([[1.0, 0.0]]), np.array([2.0]), ["a"])
    >>> m.beta.round(4).tolist(), m.theta("a").round(4).tolist()
    ([0.6667, 0.0], [0.6667])
    """

    ITEM_ARRAYS = ("B", "c", "cnt", "ainv")

    def __init__(self, dim: int, z: Any, lam: float, max_items: int, *,
                 feature_space: str) -> None:
        if not lam > 0:
            raise InvalidInput(f"lam must be > 0, got {lam!r}")
        if isinstance(max_items, bool) or int(max_items) != max_items or max_items < 1:
            raise InvalidInput(f"max_items must be a positive integer, got {max_items!r}")
        self.dim, self.lam, self.max_items = int(dim), float(lam), int(max_items)
        self.z = check_z(z, self.dim)
        self.k = 1 if self.z == "bias" else len(self.z)
        self.feature_space = feature_space
        self._zcols = None if self.z == "bias" else np.array(self.z, dtype=np.intp)
        d = self.dim
        self.xtx, self.xty, self.n = np.zeros((d, d)), np.zeros(d), 0
        self.schur, self.schur_b = self.lam * np.eye(d), np.zeros(d)
        self.slots: OrderedDict[str, int] = OrderedDict()  # LRU order: oldest first
        self._free: list[int] = []
        self._used = 0  # high-water mark of slots
        self.evictions = 0
        self.B, self.c = np.zeros((0, self.k, d)), np.zeros((0, self.k))
        self.cnt, self.ainv = np.zeros(0), np.zeros((0, self.k, self.k))
        self._grow(min(self.max_items, 256))
        #: own-row statistics, kept separately only after the first merge (before it, own = all)
        self.own: dict[str, Any] | None = None
        #: what the last update added, ``(ids, ΔB, Δc, Δn, ΔXᵀX, ΔXᵀr, rows)`` (None after
        #: one that went row by row): :meth:`HybridPolicy.batch_stats`
        self.batch: tuple[Any, ...] | None = None
        self._changed()

    # -- storage -------------------------------------------------------------
    def _grow(self, cap: int) -> None:
        def widen(a: np.ndarray) -> np.ndarray:
            out = np.zeros((cap, *a.shape[1:]))
            out[:a.shape[0]] = a
            return out
        for name in self.ITEM_ARRAYS:
            setattr(self, name, widen(getattr(self, name)))
        if getattr(self, "own", None) is not None:
            for name in ("B", "c", "cnt"):
                self.own[name] = widen(self.own[name])

    def _alloc(self, item: str) -> int:
        if self._free:
            slot = self._free.pop()
        else:
            if self._used == self.B.shape[0]:
                self._grow(min(self.max_items, 2 * self._used))
            slot, self._used = self._used, self._used + 1
        self.slots[item] = slot
        return slot

    def _changed(self) -> None:
        self._linv: np.ndarray | None = None
        self._beta: np.ndarray | None = None

    def z_of(self, X: np.ndarray) -> np.ndarray:
        """The z rows of φ rows, (m, k)."""
        return np.ones((X.shape[0], 1)) if self._zcols is None else X[:, self._zcols]

    def _ainv_of(self, s: np.ndarray) -> np.ndarray:
        if self._zcols is None:
            return (1.0 / (self.lam + self.cnt[s]))[:, None, None]
        Z = self.B[s][:, :, self._zcols]
        A = 0.5 * (Z + Z.transpose(0, 2, 1)) + self.lam * np.eye(self.k)
        inv = np.linalg.inv(A)
        return 0.5 * (inv + inv.transpose(0, 2, 1))

    def _term(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(Σ B_aᵀA_a⁻¹B_a, Σ B_aᵀA_a⁻¹c_a)`` over slots s, vectorised in chunks."""
        d = self.dim
        M, v = np.zeros((d, d)), np.zeros(d)
        for lo in range(0, len(s), _CHUNK):
            t = s[lo:lo + _CHUNK]
            B = self.B[t]
            W = (self.ainv[t] @ B).reshape(-1, d)
            M += B.reshape(-1, d).T @ W
            v += W.T @ self.c[t].reshape(-1)
        return 0.5 * (M + M.T), v

    def _evict(self, items: list[str]) -> None:
        s = np.array([self.slots[i] for i in items], dtype=np.intp)
        M, v = self._term(s)
        self.schur += M
        self.schur_b += v
        for name in self.ITEM_ARRAYS:
            getattr(self, name)[s] = 0.0
        if self.own is not None:
            for name in ("B", "c", "cnt"):
                self.own[name][s] = 0.0
        for i in items:
            del self.slots[i]
        self._free.extend(s.tolist()[::-1])
        self.evictions += len(items)

    def _apply(self, ids: list[str], dB: np.ndarray, dc: np.ndarray, dn: np.ndarray,
               own: bool) -> bool:
        """Add blocks for distinct ``ids`` (stamped in this order). False, with nothing
        changed, when the cap would evict one of ``ids`` (the caller then goes one by one)."""
        new = [i for i in ids if i not in self.slots]
        excess = len(self.slots) + len(new) - self.max_items
        if excess > 0:
            front = list(itertools.islice(self.slots, excess))
            if len(new) > self.max_items or not set(front).isdisjoint(ids):
                return False
            self._evict(front)
        held = np.array([self.slots[i] for i in ids if i in self.slots], dtype=np.intp)
        M_old, v_old = self._term(held)
        s = np.array([self.slots[i] if i in self.slots else self._alloc(i) for i in ids],
                     dtype=np.intp)
        self.B[s] += dB
        self.c[s] += dc
        self.cnt[s] += dn
        if own and self.own is not None:
            self.own["B"][s] += dB
            self.own["c"][s] += dc
            self.own["cnt"][s] += dn
        self.ainv[s] = self._ainv_of(s)
        M_new, v_new = self._term(s)
        self.schur += M_old - M_new
        self.schur_b += v_old - v_new
        for i in ids:
            self.slots.move_to_end(i)
        self._changed()
        return True

    def _add_shared(self, xtx: np.ndarray, xty: np.ndarray, n: int, own: bool) -> None:
        self.xtx += xtx
        self.xty += xty
        self.n += n
        self.schur += xtx
        self.schur_b += xty
        if own and self.own is not None:
            self.own["xtx"] += xtx
            self.own["xty"] += xty
            self.own["n"] += n
        self._changed()

    # -- learning ------------------------------------------------------------
    def update(self, X: np.ndarray, r: np.ndarray, ids: list[str]) -> None:
        """Learn rows X (m, d), rewards r, item ids; inputs already validated."""
        m = X.shape[0]
        if m == 0:
            return
        last = {i: j for j, i in enumerate(ids)}
        order = sorted(last, key=last.__getitem__)  # stamped as row-by-row would
        Z = self.z_of(X)
        if m == 1:
            dB, dc, dn = (Z[0][:, None] * X[0])[None], Z * r[:, None], np.ones(1)
        else:
            pos = {i: t for t, i in enumerate(order)}
            inv = np.fromiter((pos[i] for i in ids), dtype=np.intp, count=m)
            dB, dc, dn = item_sums(X, r, Z, inv, len(order))
        if not self._apply(order, dB, dc, dn, own=True):
            for j in range(m):  # the cap bites inside this batch: exact row-by-row order
                self.update(X[j:j + 1], r[j:j + 1], ids[j:j + 1])
            self.batch = None
            return
        xtx, xty = X.T @ X, X.T @ r
        self._add_shared(xtx, xty, m, own=True)
        self.batch = (order, dB, dc, dn, xtx, xty, m)

    def check_stats(self, stats: SufficientStats) -> None:
        if stats.dim != self.dim:
            raise InvalidInput(f"cannot merge statistics of dim {stats.dim} into dim {self.dim}")
        if isinstance(stats, HybridStats) and stats.z != self.z:
            raise InvalidInput(f"cannot merge z layout {stats.z!r} into {self.z!r}")

    def add(self, stats: SufficientStats) -> None:
        """Add another instance's statistics (not counted as own); checked by check_stats."""
        if self.own is None:  # from now on own rows differ from all rows
            self.own = {"xtx": self.xtx.copy(), "xty": self.xty.copy(), "n": self.n,
                        "B": self.B.copy(), "c": self.c.copy(), "cnt": self.cnt.copy()}
        if isinstance(stats, HybridStats) and stats.item_ids:
            order = sorted(range(len(stats.item_ids)),
                           key=lambda j: (stats.item_n[j], stats.item_ids[j]))
            ids = [stats.item_ids[j] for j in order]
            if not self._apply(ids, stats.item_xz[order], stats.item_zr[order],
                               stats.item_n[order], own=False):
                for i, j in zip(ids, order, strict=True):
                    self._apply([i], stats.item_xz[j:j + 1], stats.item_zr[j:j + 1],
                                stats.item_n[j:j + 1], own=False)
        self._add_shared(stats.xtx, stats.xty, stats.n, own=False)

    def recompute(self) -> None:
        """Rebuild Ã and b̃ from the raw statistics (discards accumulated rounding)."""
        M, v = self._term(np.array(list(self.slots.values()), dtype=np.intp))
        self.schur = self.lam * np.eye(self.dim) + self.xtx - M
        self.schur_b = self.xty - v
        self._changed()

    # -- solution ------------------------------------------------------------
    def _factor(self) -> None:
        try:
            L = np.linalg.cholesky(self.schur)
        except np.linalg.LinAlgError:  # rounding drove Ã out of PD: rebuild exactly, retry
            self.recompute()
            L = np.linalg.cholesky(self.schur)
        self._linv = np.linalg.inv(L)
        self._beta = self._linv.T @ (self._linv @ self.schur_b)

    @property
    def linv(self) -> np.ndarray:
        """``L⁻¹`` with ``LLᵀ = Ã``, so ``Ã⁻¹ = L⁻ᵀL⁻¹`` and ``L⁻ᵀ`` is a factor of Ã⁻¹."""
        if self._linv is None:
            self._factor()
        return self._linv

    @property
    def beta(self) -> np.ndarray:
        """Shared coefficients ``β = Ã⁻¹b̃``."""
        if self._beta is None:
            self._factor()
        return self._beta

    def theta(self, item: str) -> np.ndarray:
        """``θ_a = A_a⁻¹(c_a − B_aβ)``; 0 for an item without a block."""
        s = self.slots.get(item)
        if s is None:
            return np.zeros(self.k)
        return self.ainv[s] @ (self.c[s] - self.B[s] @ self.beta)

    def parts(self, X: np.ndarray, ids: list[str] | None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per candidate: ``g = φ − B_aᵀu`` (n, d), ``uᵀc_a``, ``zᵀu``, z and slot (−1 = none),
        with ``u = A_a⁻¹z``. Then mean ``= gᵀβ + uᵀc_a`` and variance ``= gᵀÃ⁻¹g + zᵀu``."""
        n = X.shape[0]
        Z = self.z_of(X)
        slots = (np.full(n, -1, dtype=np.intp) if ids is None else  # map: the fastest lookup
                 np.array(list(map(self.slots.get, ids, itertools.repeat(-1, n))), np.intp))
        held = slots >= 0
        zvar = np.einsum("ij,ij->i", Z, Z) / self.lam  # prior A_a = λI
        if not held.any():
            return X, np.zeros(n), zvar, Z, slots
        every = bool(held.all())
        s, Zh = (slots, Z) if every else (slots[held], Z[held])
        if self.k == 1:  # scalars: no stacked matmuls
            u = self.ainv[s, 0, 0] * Zh[:, 0]
            w = self.B[s, 0, :] * u[:, None]
            off_h, zvar_h = u * self.c[s, 0], u * Zh[:, 0]
        else:
            u = np.einsum("hkl,hl->hk", self.ainv[s], Zh)
            w = np.einsum("hk,hkd->hd", u, self.B[s])
            off_h, zvar_h = np.einsum("hk,hk->h", u, self.c[s]), np.einsum("hk,hk->h", u, Zh)
        if every:
            return X - w, off_h, zvar_h, Z, slots
        G = X.copy()
        G[held] -= w
        off = np.zeros(n)
        off[held] = off_h
        zvar[held] = zvar_h
        return G, off, zvar, Z, slots

    # -- state ---------------------------------------------------------------
    def stats(self, own: bool) -> HybridStats:
        """Own rows' statistics (``own``) or everything learnt, blocks in LRU order."""
        src = self.own if own and self.own is not None else {
            "xtx": self.xtx, "xty": self.xty, "n": self.n, "B": self.B, "c": self.c,
            "cnt": self.cnt}
        ids = [i for i, s in self.slots.items() if src["cnt"][s] > 0]
        s = np.array([self.slots[i] for i in ids], dtype=np.intp)
        return HybridStats(src["xtx"], src["xty"], src["n"], self.feature_space, z=self.z,
                           item_ids=tuple(ids), item_xz=src["B"][s].reshape(-1, self.k, self.dim),
                           item_zr=src["c"][s].reshape(-1, self.k), item_n=src["cnt"][s])

    def nbytes(self) -> int:
        """Bytes held: arrays at their allocated capacity plus the id map and its keys."""
        arrays = sum(getattr(self, n).nbytes for n in self.ITEM_ARRAYS)
        if self.own is not None:
            arrays += sum(self.own[n].nbytes for n in ("B", "c", "cnt"))
        ids = sys.getsizeof(self.slots) + sum(sys.getsizeof(i) + 32 for i in self.slots)
        return int(arrays + ids + 4 * self.schur.nbytes)

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        ids = list(self.slots)
        s = np.array([self.slots[i] for i in ids], dtype=np.intp)
        params: dict[str, Any] = {"n": self.n, "items": ids, "evictions": self.evictions,
                                  "own_n": None if self.own is None else self.own["n"]}
        arrays = {"xtx": self.xtx, "xty": self.xty, "schur": self.schur,
                  "schur_b": self.schur_b}
        arrays |= {f"item_{n}": getattr(self, n)[s] for n in self.ITEM_ARRAYS}
        if self.own is not None:
            arrays |= {"own_xtx": self.own["xtx"], "own_xty": self.own["xty"]}
            arrays |= {f"own_item_{n}": self.own[n][s] for n in ("B", "c", "cnt")}
        return params, arrays

    def set_state(self, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        ids = list(params["items"])
        if any(not isinstance(i, str) for i in ids) or len(set(ids)) != len(ids):
            raise InvalidInput("state item ids must be distinct str")
        if len(ids) > self.max_items:
            raise InvalidInput(f"state holds {len(ids)} items, over max_items={self.max_items}")
        d, k, u = self.dim, self.k, len(ids)
        own = params.get("own_n") is not None
        shapes = {"xtx": (d, d), "xty": (d,), "schur": (d, d), "schur_b": (d,),
                  "item_B": (u, k, d), "item_c": (u, k), "item_cnt": (u,), "item_ainv": (u, k, k)}
        if own:
            shapes |= {"own_xtx": (d, d), "own_xty": (d,), "own_item_B": (u, k, d),
                       "own_item_c": (u, k), "own_item_cnt": (u,)}
        for name, shape in shapes.items():
            arr = np.asarray(arrays.get(name))
            if arr.shape != shape or arr.dtype != np.float64:
                raise InvalidInput(f"state array {name!r} must be float64 {shape}, got "
                                   f"{arr.dtype} {arr.shape}")
        self.xtx, self.xty = arrays["xtx"].copy(), arrays["xty"].copy()
        self.schur, self.schur_b = arrays["schur"].copy(), arrays["schur_b"].copy()
        self.n, self.evictions = int(params["n"]), int(params["evictions"])
        self.slots = OrderedDict((i, j) for j, i in enumerate(ids))
        self._free, self._used = [], u
        cap = max(u, min(self.max_items, 256))
        for n in self.ITEM_ARRAYS:
            a = np.zeros((cap, *arrays[f"item_{n}"].shape[1:]))
            a[:u] = arrays[f"item_{n}"]
            setattr(self, n, a)
        self.own = None
        if own:
            self.own = {"xtx": arrays["own_xtx"].copy(), "xty": arrays["own_xty"].copy(),
                        "n": int(params["own_n"])}
            for n in ("B", "c", "cnt"):
                a = np.zeros((cap, *arrays[f"own_item_{n}"].shape[1:]))
                a[:u] = arrays[f"own_item_{n}"]
                self.own[n] = a
        self._changed()
