"""Exact incremental ridge regression, the shared core of the linear policies.

State (all float64)::

    S = Σ γ^(t-s) φ_s φ_sᵀ        c = Σ γ^(t-s) r_s φ_s
    A = λI + S                    b = c              θ = A⁻¹b

``S``/``c`` are the statistics of everything this model has learnt from (its
own rows plus merged statistics); ``own`` holds only its own rows, which is
what an instance publishes to the others (see :class:`SufficientStats`). Until
the first merge the two are the same, so ``own`` is kept apart only from then on
(one array update less per learned row on the streaming path).

Updates keep ``A⁻¹`` exact:

* one row (γ = 1): Sherman–Morrison
  ``A⁻¹ ← A⁻¹ − (A⁻¹φ)(A⁻¹φ)ᵀ / (1 + φᵀA⁻¹φ)``;
* a batch of m < d rows (γ = 1): Woodbury
  ``A⁻¹ ← A⁻¹ − A⁻¹Xᵀ (I_m + X A⁻¹ Xᵀ)⁻¹ X A⁻¹``;
* larger batches, merges and every ``refactor_every`` rows: refactorisation
  from ``A`` by Cholesky (``A = LLᵀ``, ``A⁻¹ = L⁻ᵀL⁻¹``), which bounds the drift
  the rank-one updates accumulate.

Forgetting (``γ < 1``) discounts the data once per observed row:
``S ← γ^m S + Σ_j γ^(m-1-j) φ_jφ_jᵀ`` for a batch of m rows, so batched and
row-by-row updates give the same statistics. The prior ``λI`` is not
discounted (it keeps ``A`` well conditioned however long the stream, as in
D-LinUCB); because ``γS + λI`` is not a low-rank change of ``A``, the γ < 1
path refactorises after every update call (O(d³) per call; batch your rows).

Forgetting and merge: merged statistics are added as they are and from then
on decay with *this* instance's clock. Shards merged this way equal a single
pass only when γ = 1; with γ < 1 the result weights each row by the number of
rows that followed it on the shard that saw it, which differs from a single
global order. Use forgetting with merge only when shards see comparable
traffic, or merge often.

References
----------
Sherman, Morrison (1950). Adjustment of an inverse matrix corresponding to a
change in one element of a given matrix. Ann. Math. Statist.
Russac, Vernade, Cappé (2019). Weighted linear bandits for non-stationary
environments (D-LinUCB). NeurIPS.
"""

from __future__ import annotations

import numpy as np

from bandits.exceptions import InvalidInput
from bandits.stats import SufficientStats

__all__ = ["RidgeModel"]


class RidgeModel:
    """Ridge statistics with an exactly maintained inverse.

    Example
    -------
    >>> import numpy as np
    >>> m = RidgeModel(dim=2, lam=1.0, feature_space="fs")
    >>> m.update(np.array([[1.0, 0.0]]), np.array([2.0]))
    >>> m.theta.tolist()
    [1.0, 0.0]
    """

    ARRAYS = ("xtx", "xty", "a_inv", "own_xtx", "own_xty")

    def __init__(self, dim: int, lam: float = 1.0, gamma: float = 1.0, *,
                 feature_space: str, refactor_every: int = 512) -> None:
        if int(dim) != dim or dim < 1:
            raise InvalidInput(f"dim must be a positive integer, got {dim!r}")
        if not lam > 0:
            raise InvalidInput(f"lam must be > 0, got {lam!r}")
        if not 0.0 < gamma <= 1.0:
            raise InvalidInput(f"gamma must be in (0, 1], got {gamma!r}")
        if int(refactor_every) != refactor_every or refactor_every < 1:
            raise InvalidInput(f"refactor_every must be a positive integer, got {refactor_every!r}")
        self.dim = int(dim)
        self.lam = float(lam)
        self.gamma = float(gamma)
        self.refactor_every = int(refactor_every)
        self.feature_space = feature_space
        d = self.dim
        self.xtx = np.zeros((d, d))
        self.xty = np.zeros(d)
        self.n = 0
        #: own-row statistics apart from all rows, only after the first merge (else None)
        self._own: tuple[np.ndarray, np.ndarray] | None = None
        self.own_n = 0
        self.a_inv = np.eye(d) / self.lam
        self.since_refactor = 0
        self._theta: np.ndarray | None = None
        self._cov_factor: np.ndarray | None = None

    # -- derived quantities -------------------------------------------------
    @property
    def A(self) -> np.ndarray:
        """``λI + S``."""
        return self.xtx + self.lam * np.eye(self.dim)

    @property
    def theta(self) -> np.ndarray:
        """``θ = A⁻¹b``."""
        if self._theta is None:
            self._theta = self.a_inv @ self.xty
        return self._theta

    def widths(self, X: np.ndarray) -> np.ndarray:
        """``sqrt(φᵀA⁻¹φ)`` for every row of X, vectorised."""
        q = np.einsum("ij,ij->i", X @ self.a_inv, X)
        return np.sqrt(np.maximum(q, 0.0))

    def cov_factor(self) -> np.ndarray:
        """Lower-triangular C with ``CCᵀ = A⁻¹`` (cached until the next change)."""
        if self._cov_factor is None:
            try:
                self._cov_factor = np.linalg.cholesky(self.a_inv)
            except np.linalg.LinAlgError:  # drifted out of PD: rebuild exactly, retry
                self.refactor()
                self._cov_factor = np.linalg.cholesky(self.a_inv)
        return self._cov_factor

    @property
    def own_xtx(self) -> np.ndarray:
        return self.xtx if self._own is None else self._own[0]

    @property
    def own_xty(self) -> np.ndarray:
        return self.xty if self._own is None else self._own[1]

    @property
    def own_stats(self) -> SufficientStats:
        return SufficientStats(self.own_xtx, self.own_xty, self.own_n, self.feature_space)

    @property
    def total_stats(self) -> SufficientStats:
        return SufficientStats(self.xtx, self.xty, self.n, self.feature_space)

    # -- changes ------------------------------------------------------------
    def _changed(self) -> None:
        self._theta = None
        self._cov_factor = None

    def refactor(self) -> None:
        """Recompute ``A⁻¹`` from ``A`` (Cholesky), discarding accumulated drift."""
        L = np.linalg.cholesky(self.A)
        L_inv = np.linalg.inv(L)
        a_inv = L_inv.T @ L_inv
        self.a_inv = (a_inv + a_inv.T) * 0.5
        self.since_refactor = 0
        self._changed()

    def update(self, X: np.ndarray, r: np.ndarray) -> None:
        """Learn from rows X (m, d) with rewards r (m,); inputs already validated."""
        m = X.shape[0]
        if m == 0:
            return
        if self.gamma != 1.0:
            batch = SufficientStats.from_batch(X, r, self.feature_space, self.gamma)
            decay = self.gamma ** m
            self.xtx = decay * self.xtx + batch.xtx
            self.xty = decay * self.xty + batch.xty
            if self._own is not None:
                self._own = (decay * self._own[0] + batch.xtx, decay * self._own[1] + batch.xty)
            self.n += m
            self.own_n += m
            self.refactor()
            return
        if m == 1:
            self._update_one(X[0], float(r[0]))
            return
        xtx = X.T @ X
        xty = X.T @ r
        self.xtx += xtx
        self.xty += xty
        if self._own is not None:
            self._own[0][...] += xtx
            self._own[1][...] += xty
        self.n += m
        self.own_n += m
        self.since_refactor += m
        if self.since_refactor >= self.refactor_every or m >= self.dim:
            self.refactor()
        else:
            U = X @ self.a_inv  # (m, d); A⁻¹ symmetric so XA⁻¹ = (A⁻¹Xᵀ)ᵀ
            K = np.eye(m) + U @ X.T
            self.a_inv -= U.T @ np.linalg.solve(K, U)
            self.a_inv = (self.a_inv + self.a_inv.T) * 0.5
        self._changed()

    def _update_one(self, x: np.ndarray, y: float) -> None:
        """One row (γ = 1), the streaming case: a single outer product added in place
        to both statistics, and a Sherman–Morrison step on ``A⁻¹`` written into the
        same scratch matrix — no (d, d) temporaries beyond it."""
        outer = np.multiply.outer(x, x)
        self.xtx += outer
        yx = y * x
        self.xty += yx
        if self._own is not None:
            self._own[0][...] += outer
            self._own[1][...] += yx
        self.n += 1
        self.own_n += 1
        self.since_refactor += 1
        if self.since_refactor >= self.refactor_every:
            self.refactor()
            return
        u = self.a_inv @ x
        np.multiply.outer(u, u / (1.0 + x @ u), out=outer)
        self.a_inv -= outer
        self._changed()

    def add(self, stats: SufficientStats) -> None:
        """Add another instance's statistics (not counted as own) and refactorise."""
        if self._own is None:  # from now on own rows differ from all rows
            self._own = (self.xtx.copy(), self.xty.copy())
        self.xtx = self.xtx + stats.xtx
        self.xty = self.xty + stats.xty
        self.n += stats.n
        self.refactor()

    # -- state --------------------------------------------------------------
    def get_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        params = {"n": self.n, "own_n": self.own_n, "since_refactor": self.since_refactor}
        arrays = {name: getattr(self, name) for name in self.ARRAYS}
        return params, arrays

    def set_state(self, params: dict, arrays: dict[str, np.ndarray]) -> None:
        d = self.dim
        shapes = {"xtx": (d, d), "xty": (d,), "a_inv": (d, d), "own_xtx": (d, d), "own_xty": (d,)}
        for name, shape in shapes.items():
            arr = np.asarray(arrays[name])
            if arr.shape != shape or arr.dtype != np.float64:
                raise InvalidInput(f"state array {name!r} must be float64 {shape}, got "
                                   f"{arr.dtype} {arr.shape}")
        self.xtx, self.xty, self.a_inv = (np.array(arrays[k], dtype=np.float64, copy=True)
                                          for k in ("xtx", "xty", "a_inv"))
        own = (np.asarray(arrays["own_xtx"]), np.asarray(arrays["own_xty"]))
        same = np.array_equal(own[0], self.xtx) and np.array_equal(own[1], self.xty)
        self._own = None if same else (own[0].copy(), own[1].copy())
        self.n = int(params["n"])
        self.own_n = int(params["own_n"])
        self.since_refactor = int(params["since_refactor"])
        self._changed()
