"""What a server needs of a hybrid policy: the posterior means and marginal covariances.

A :class:`~bandits.hybrid.HybridPolicy` holds, per item, the raw statistics of the
joint ridge (``B_a = Σzφᵀ`` is k×d): exact and mergeable, but ~8·k·d bytes an item,
too much to publish every few seconds. Its :meth:`serving_view` keeps only what
scoring needs, per item ``θ_a`` (k) and the Cholesky factor ``C_a`` of θ_a's
marginal posterior covariance (k(k+1)/2), plus the shared ``β`` and ``L⁻¹``
(``Ã = LLᵀ``)::

    M_a = A_a⁻¹ + A_a⁻¹B_a Ã⁻¹ B_aᵀA_a⁻¹ = C_a C_aᵀ        (θ_a's block of the joint inverse)
    mean(φ, z) = φᵀβ + zᵀθ_a                                  (exact)
    width(φ, z) = ‖L⁻¹φ‖ + ‖C_aᵀz‖ ≥ sqrt(Var[φᵀβ + zᵀθ_a])   (Cauchy–Schwarz)

So the mean is the worker's exactly; the UCB width drops the β–θ_a
cross-covariance and is an upper bound of the exact one (a little more
exploration, never less). Thompson sampling draws β and each θ_a from their
marginals, independently (the same approximation). An item without a block
has ``θ_a = 0, M_a = I/λ`` (prior), so it is scored from its embedding alone.

A serving view does not learn: ``update`` and ``merge`` raise
:class:`~bandits.exceptions.InvalidInput`.

>>> import numpy as np
>>> from bandits.hybrid import HybridLinUCB
>>> p = HybridLinUCB(dim=2, alpha=0.5, max_items=10, feature_space="fs")
>>> p.update(np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([1.0, 0.0]), ["a", "b"])
>>> view = p.serving_view()
>>> X, ids = np.array([[1.0, 0.0]] * 3), ["a", "b", "new"]
>>> bool(np.allclose(view.predict(X, ids), p.predict(X, ids)))
True
>>> bool(np.all(view.widths(X, ids) >= p.widths(X, ids) - 1e-12))
True
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from bandits.base import Policy
from bandits.exceptions import InvalidInput
from bandits.hybrid_stats import check_z
from bandits.slates import Slate, TopKSelect, sampled_slate
from bandits.stats import SufficientStats

if TYPE_CHECKING:
    from bandits.hybrid_model import HybridModel

__all__ = ["HybridServing", "serving_arrays"]


def serving_arrays(model: HybridModel) -> tuple[list[str], dict[str, np.ndarray]]:
    """Item ids and the arrays of a serving view (see module doc) of ``model``."""
    ids = list(model.slots)
    s = np.array([model.slots[i] for i in ids], dtype=np.intp)
    linv, beta = model.linv, model.beta
    k = model.k
    theta = np.zeros((len(ids), k))
    chol = np.zeros((len(ids), k * (k + 1) // 2))
    tril = np.tril_indices(k)
    for lo in range(0, len(ids), 4096):  # bounded temporaries: (chunk, k, d)
        sl = s[lo:lo + 4096]
        ainv, B = model.ainv[sl], model.B[sl]
        P = ainv @ B  # A_a⁻¹B_a (n, k, d)
        theta[lo:lo + len(sl)] = np.einsum("nkl,nl->nk", ainv, model.c[sl]) - P @ beta
        Q = P @ linv.T  # (n, k, d): Q Qᵀ = A_a⁻¹B_a Ã⁻¹ B_aᵀA_a⁻¹
        M = ainv + Q @ Q.transpose(0, 2, 1)
        chol[lo:lo + len(sl)] = np.linalg.cholesky(M)[:, tril[0], tril[1]]
    return ids, {"beta": beta.copy(), "linv": linv.copy(), "theta": theta, "chol": chol}


class HybridServing(TopKSelect, Policy):
    """Serving view of a hybrid policy (see module doc); ``exploration`` is ``"ucb"``
    (score = mean + α·width, top-k with ε) or ``"ts"`` (one posterior draw)."""

    algorithm = "hybrid_serving"
    uses_item_ids = True

    def __init__(self, dim: int, exploration: str = "ucb", alpha: float = 1.0, v: float = 1.0,
                 epsilon: float = 0.0, mc_samples: int = 1000, z: str | Sequence[int] = "bias",
                 lam: float = 1.0, source: str = "", *, feature_space: str = "default",
                 seed: int | np.random.Generator | None = None) -> None:
        super().__init__(dim, feature_space, seed)
        if exploration not in ("ucb", "ts"):
            raise InvalidInput(f"exploration must be 'ucb' or 'ts', got {exploration!r}")
        self.exploration, self.alpha, self.v = exploration, float(alpha), float(v)
        self.epsilon, self.mc_samples, self.lam = float(epsilon), int(mc_samples), float(lam)
        self.z = check_z(z, self.dim)
        self.k = 1 if self.z == "bias" else len(self.z)
        self.source = source  # the algorithm it was taken from
        self._zcols = None if self.z == "bias" else np.array(self.z, dtype=np.intp)
        self._tril = np.tril_indices(self.k)
        self._slots: dict[str, int] = {}
        self._beta = np.zeros(self.dim)
        self._linv = np.eye(self.dim) / np.sqrt(self.lam)
        self._theta = np.zeros((0, self.k))
        self._chol = np.zeros((0, self.k, self.k))

    def hyper_parameters(self) -> dict[str, Any]:
        return {"exploration": self.exploration, "alpha": self.alpha, "v": self.v,
                "epsilon": self.epsilon, "mc_samples": self.mc_samples,
                "z": self.z if self.z == "bias" else list(self.z), "lam": self.lam,
                "source": self.source, "seed": self.seed}

    @property
    def item_ids(self) -> list[str]:
        return list(self._slots)

    @property
    def stats(self) -> SufficientStats:
        raise InvalidInput("a serving view holds no statistics; the worker's policy does")

    # -- scoring --------------------------------------------------------------
    def _parts(self, X: np.ndarray, ids: list[str] | None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per candidate: z (n, k), zᵀθ_a (n,), and C_a (n, k, k) (prior I/√λ if none)."""
        n = X.shape[0]
        Z = np.ones((n, 1)) if self._zcols is None else X[:, self._zcols]
        C = np.broadcast_to(np.eye(self.k) / np.sqrt(self.lam), (n, self.k, self.k)).copy()
        off = np.zeros(n)
        if ids is not None and self._slots:
            slots = np.array(list(map(self._slots.get, ids, itertools.repeat(-1, n))), np.intp)
            held = slots >= 0
            if held.any():
                s = slots[held]
                off[held] = np.einsum("hk,hk->h", Z[held], self._theta[s])
                C[held] = self._chol[s]
        return Z, off, C

    def predict(self, X: np.ndarray, item_ids: Sequence[str] | None = None) -> np.ndarray:
        """Posterior mean ``φᵀβ + zᵀθ_a`` (equal to the source policy's)."""
        X = self._check_X(X)
        _, off, _ = self._parts(X, self._check_ids(item_ids, X.shape[0]))
        return X @ self._beta + off

    def widths(self, X: np.ndarray, item_ids: Sequence[str] | None = None) -> np.ndarray:
        """``‖L⁻¹φ‖ + ‖C_aᵀz‖``, an upper bound of the exact posterior std (units of v)."""
        X = self._check_X(X)
        Z, _, C = self._parts(X, self._check_ids(item_ids, X.shape[0]))
        return self._widths(X, Z, C)

    def _widths(self, X: np.ndarray, Z: np.ndarray, C: np.ndarray) -> np.ndarray:
        shared = np.linalg.norm(X @ self._linv.T, axis=1)
        return shared + np.linalg.norm(np.einsum("nkl,nk->nl", C, Z), axis=1)

    def _score(self, X: np.ndarray, item_ids: list[str] | None) -> np.ndarray:
        Z, off, C = self._parts(X, item_ids)
        mean = X @ self._beta + off
        if self.exploration == "ts" or self.alpha == 0.0:
            return mean
        return mean + self.alpha * self._widths(X, Z, C)

    def _sampler(self, X: np.ndarray, item_ids: list[str] | None, rng: np.random.Generator,
                 bonus: np.ndarray | None = None):
        """``draw(m)`` → (n, m) scores with β̃ ~ N(β, v²Ã⁻¹) and each θ̃_a ~ N(θ_a, v²M_a),
        independently (marginals)."""
        Z, off, C = self._parts(X, item_ids)
        mean = X @ self._beta + off + (0.0 if bonus is None else bonus)

        def draw(size: int) -> np.ndarray:
            b = self.v * (self._linv.T @ rng.standard_normal((self.dim, size)))
            t = self.v * np.einsum("nkl,nk,nls->ns", C, Z,
                                   rng.standard_normal((X.shape[0], self.k, size)))
            return mean[:, None] + X @ b + t

        return draw

    def _select(self, X: np.ndarray, k: int, rng: np.random.Generator,
                bonus: np.ndarray | None, item_ids: list[str] | None) -> Slate:
        if self.exploration == "ucb":
            return super()._select(X, k, rng, bonus, item_ids)
        draw = self._sampler(X, item_ids, rng, bonus)
        return sampled_slate(draw(1)[:, 0], k, draw, self.mc_samples)

    # -- a view does not learn -------------------------------------------------
    def _update(self, X: np.ndarray, r: np.ndarray, item_ids: list[str] | None) -> None:
        raise InvalidInput("a serving view does not learn; update the worker's policy")

    def _merge(self, stats: SufficientStats) -> None:
        raise InvalidInput("a serving view does not merge; merge the worker's policy")

    # -- state ----------------------------------------------------------------
    def load(self, ids: list[str], arrays: dict[str, np.ndarray]) -> HybridServing:
        """Fill from :func:`serving_arrays` output; returns self."""
        self._set_state({"items": ids}, arrays)
        return self

    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        chol = self._chol[:, self._tril[0], self._tril[1]]
        return ({"items": list(self._slots)},
                {"beta": self._beta, "linv": self._linv, "theta": self._theta, "chol": chol})

    def _set_state(self, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        ids = list(params["items"])
        if any(not isinstance(i, str) for i in ids) or len(set(ids)) != len(ids):
            raise InvalidInput("serving view item ids must be distinct str")
        d, k, n = self.dim, self.k, len(ids)
        shapes = {"beta": (d,), "linv": (d, d), "theta": (n, k), "chol": (n, k * (k + 1) // 2)}
        for name, shape in shapes.items():
            arr = np.asarray(arrays.get(name))
            if arr.shape != shape or not np.all(np.isfinite(arr)):
                raise InvalidInput(f"serving view array {name!r} must be finite {shape}, "
                                   f"got {arr.shape}")
        self._slots = {i: j for j, i in enumerate(ids)}
        self._beta = np.array(arrays["beta"], dtype=np.float64)
        self._linv = np.array(arrays["linv"], dtype=np.float64)
        self._theta = np.array(arrays["theta"], dtype=np.float64)
        self._chol = np.zeros((n, k, k))
        self._chol[:, self._tril[0], self._tril[1]] = arrays["chol"]

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, items={len(self._slots)})"
