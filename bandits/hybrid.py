"""Hybrid contextual bandits: a shared model over φ plus per-item terms over z.

Model (Li et al. 2010, hybrid LinUCB), ridge λ on every coefficient::

    r ≈ φᵀβ + zᵀθ_a        φ ∈ ℝᵈ full features,  z ∈ ℝᵏ user context (columns of φ or 1)

β (shared, generalises through the item embedding inside φ) and θ_a (per
item, memorises "liked more than its text suggests" per user context) are
the exact joint ridge solution, computed by :class:`~bandits.hybrid_model.HybridModel`.
With ``u = A_a⁻¹z`` and ``g = φ − B_aᵀu``, the posterior of a candidate's
score is Gaussian with::

    mean  = φᵀβ + zᵀθ_a = gᵀβ + uᵀc_a
    s²    = gᵀÃ⁻¹g + zᵀA_a⁻¹z      (Li et al., Algorithm 2: s_{t,a}, expanded)

* :class:`HybridLinUCB` scores ``mean + α·s``; the slate is the top-k (ε-mix as in
  :mod:`bandits.slates`, closed-form propensities).
* :class:`HybridTS` samples the joint posterior exactly: ``β̃ ~ N(β, v²Ã⁻¹)``
  (β's marginal), then ``θ̃_a | β̃ ~ N(A_a⁻¹(c_a − B_aβ̃), v²A_a⁻¹)`` for each
  distinct candidate item; propensities by Monte-Carlo (:func:`~bandits.slates.sampled_slate`).

An item without a block (never seen, or evicted at the ``max_items`` cap) has
``A_a = λI, B_a = 0, c_a = 0``: its mean is ``φᵀβ`` (scored from its
embedding alone) and its width includes the prior ``zᵀz/λ``. Item ids are
``str``; ``update`` needs them, ``score``/``select`` without them treat every
candidate as unseen.

Limits: memory is ``8·(k·d + k² + k + 1)`` bytes per held item plus the id map
(``bytes_per_item`` in ``fairstream bench bandits``); no forgetting (γ = 1);
``stats`` copies every block, so publish it at checkpoint cadence, not per event.

References
----------
Li, Chu, Langford, Schapire (2010). A contextual-bandit approach to
personalized news article recommendation. WWW.
Agrawal, Goyal (2013). Thompson sampling for contextual bandits with linear
payoffs. ICML.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bandits.base import Policy
from bandits.exceptions import InvalidInput
from bandits.hybrid_model import HybridModel
from bandits.hybrid_serving import HybridServing, serving_arrays
from bandits.hybrid_stats import HybridStats
from bandits.slates import Slate, TopKSelect, sampled_slate
from bandits.stats import SufficientStats

__all__ = ["HybridLinUCB", "HybridPolicy", "HybridTS"]


class HybridPolicy(Policy):
    """A policy whose knowledge is one :class:`HybridModel` (abstract; see subclasses)."""

    uses_item_ids = True

    def __init__(self, dim: int, z: str | Sequence[int] = "bias", lam: float = 1.0,
                 max_items: int = 100_000, gamma: float = 1.0, *,
                 feature_space: str = "default",
                 seed: int | np.random.Generator | None = None) -> None:
        super().__init__(dim, feature_space, seed)
        if gamma != 1.0:
            raise InvalidInput(f"hybrid policies do not forget: gamma must be 1.0, got {gamma!r}")
        self._model = HybridModel(self.dim, z, lam, max_items, feature_space=self.feature_space)

    @staticmethod
    def _check_ids(item_ids: Sequence[str] | None, n: int) -> list[str] | None:
        if item_ids is None:
            return None
        if isinstance(item_ids, str | bytes):
            raise InvalidInput("item_ids must be a sequence of str, not one string")
        ids = list(item_ids)
        if len(ids) != n:
            raise InvalidInput(f"item_ids must have length {n}, got {len(ids)}")
        if not {*map(type, ids)} <= {str}:  # one C-level pass; subclasses take the slow one
            for i in ids:
                if not isinstance(i, str):
                    raise InvalidInput(f"item ids must be str, got {type(i).__name__} {i!r}")
        return ids

    # -- read-outs ------------------------------------------------------------
    @property
    def lam(self) -> float:
        return self._model.lam

    @property
    def z(self) -> str | tuple[int, ...]:
        """``"bias"`` or the φ columns that form z."""
        return self._model.z

    @property
    def max_items(self) -> int:
        return self._model.max_items

    @property
    def beta(self) -> np.ndarray:
        """Shared coefficients β (d,)."""
        return self._model.beta.copy()

    def theta(self, item_id: str) -> np.ndarray:
        """Per-item coefficients θ_a (k,); zeros for an item without a block."""
        return self._model.theta(str(item_id))

    @property
    def item_ids(self) -> list[str]:
        """Items holding a block, least recently updated first (the eviction order)."""
        return list(self._model.slots)

    @property
    def evictions(self) -> int:
        return self._model.evictions

    @property
    def n_observations(self) -> int:
        return self._model.n

    @property
    def stats(self) -> HybridStats:
        return self._model.stats(own=True)

    @property
    def total_stats(self) -> HybridStats:
        return self._model.stats(own=False)

    def nbytes(self) -> int:
        """Approximate bytes held by the model (arrays at capacity plus the id map)."""
        return self._model.nbytes()

    def predict(self, X: np.ndarray, item_ids: Sequence[str] | None = None) -> np.ndarray:
        """Posterior mean ``φᵀβ + zᵀθ_a`` per row."""
        X = self._check_X(X)
        G, off, _, _, _ = self._model.parts(X, self._check_ids(item_ids, X.shape[0]))
        return G @ self._model.beta + off

    def widths(self, X: np.ndarray, item_ids: Sequence[str] | None = None) -> np.ndarray:
        """Posterior standard deviation ``s`` per row (in units of v)."""
        X = self._check_X(X)
        return self._widths(*self._model.parts(X, self._check_ids(item_ids, X.shape[0]))[:3])

    def _widths(self, G: np.ndarray, off: np.ndarray, zvar: np.ndarray) -> np.ndarray:
        q = G @ self._model.linv.T
        return np.sqrt(np.maximum(np.einsum("ij,ij->i", q, q) + zvar, 0.0))

    def recompute(self) -> None:
        """Rebuild Ã, b̃ from the raw statistics (normally not needed)."""
        self._model.recompute()

    def serving_view(self) -> HybridServing:
        """What a server needs to score as this policy does (exact means, a conservative
        width): ~8·(k + k(k+1)/2) bytes an item instead of ~8·k·d (see
        :mod:`bandits.hybrid_serving`)."""
        ids, arrays = serving_arrays(self._model)
        z = self._model.z
        view = HybridServing(self.dim, **self._serving_hyper(), z=z if z == "bias" else list(z),
                             lam=self.lam, source=self.algorithm,
                             feature_space=self.feature_space, seed=self.seed)
        view.n_updates = self.n_updates
        return view.load(ids, arrays)

    def _serving_hyper(self) -> dict[str, Any]:
        raise NotImplementedError

    # -- hooks ----------------------------------------------------------------
    def _hybrid_hyper(self) -> dict[str, Any]:
        z = self._model.z
        return {"z": z if z == "bias" else list(z), "lam": self.lam,
                "max_items": self.max_items, "seed": self.seed}

    def _update(self, X: np.ndarray, r: np.ndarray, item_ids: list[str] | None) -> None:
        if item_ids is None:
            raise InvalidInput(f"{type(self).__name__}.update needs item_ids")
        self._model.update(X, r, item_ids)

    def _merge(self, stats: SufficientStats) -> None:
        self._model.check_stats(stats)
        self._model.add(stats)

    def batch_stats(self) -> HybridStats | None:
        """The statistics the last :meth:`update` added, as it summed them (so a caller
        that needs the batch's sums, such as a statistics delta, need not sum the rows
        again); None before any update and after one that the item cap made go row by
        row."""
        b = getattr(self._model, "batch", None)
        if b is None:
            return None
        ids, dB, dc, dn, xtx, xty, m = b
        return HybridStats(xtx, xty, m, self.feature_space, z=self._model.z,
                           item_ids=tuple(ids), item_xz=dB, item_zr=dc, item_n=dn)

    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return self._model.get_state()

    def _set_state(self, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self._model.set_state(params, arrays)

    def __repr__(self) -> str:
        return (f"{super().__repr__()[:-1]}, items={len(self._model.slots)}/"
                f"{self.max_items})")


class HybridLinUCB(TopKSelect, HybridPolicy):
    """Hybrid LinUCB: ``score = φᵀβ + zᵀθ_a + α·s`` (see module docstring).

    Example
    -------
    >>> import numpy as np
    >>> p = HybridLinUCB(dim=2, alpha=0.0, max_items=10, feature_space="fs")
    >>> p.update(np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([1.0, 0.0]), ["a", "b"])
    >>> p.score(np.array([[1.0, 0.0]] * 3), item_ids=["a", "b", "new"]).round(3).tolist()
    [0.625, 0.125, 0.25]
    >>> p.select(np.array([[1.0, 0.0]] * 3), k=1, item_ids=["a", "b", "new"]).indices.tolist()
    [0]
    >>> p
    HybridLinUCB(algorithm='hybrid_linucb', dim=2, n_updates=2, feature_space='fs', \
alpha=0.0, epsilon=0.0, z='bias', lam=1.0, max_items=10, items=2/10)
    """

    algorithm = "hybrid_linucb"

    def __init__(self, dim: int, alpha: float = 1.0, z: str | Sequence[int] = "bias",
                 lam: float = 1.0, epsilon: float = 0.0, max_items: int = 100_000,
                 gamma: float = 1.0, *, feature_space: str = "default",
                 seed: int | np.random.Generator | None = None) -> None:
        super().__init__(dim, z, lam, max_items, gamma, feature_space=feature_space, seed=seed)
        if not alpha >= 0:
            raise InvalidInput(f"alpha must be >= 0, got {alpha!r}")
        if not 0.0 <= epsilon <= 1.0:
            raise InvalidInput(f"epsilon must be in [0, 1], got {epsilon!r}")
        self.alpha = float(alpha)
        self.epsilon = float(epsilon)

    def hyper_parameters(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "epsilon": self.epsilon, **self._hybrid_hyper()}

    def _serving_hyper(self) -> dict[str, Any]:
        return {"exploration": "ucb", "alpha": self.alpha, "epsilon": self.epsilon}

    def _score(self, X: np.ndarray, item_ids: list[str] | None) -> np.ndarray:
        G, off, zvar, _, _ = self._model.parts(X, item_ids)
        mean = G @ self._model.beta + off
        return mean if self.alpha == 0.0 else mean + self.alpha * self._widths(G, off, zvar)


class HybridTS(HybridPolicy):
    """Hybrid Thompson sampling over the exact joint posterior (see module docstring).

    ``score`` is the posterior mean; ``select`` ranks one joint draw.

    Example
    -------
    >>> import numpy as np
    >>> p = HybridTS(dim=2, v=0.5, mc_samples=200, max_items=10, seed=0, feature_space="fs")
    >>> p.update(np.eye(2), np.array([1.0, 0.0]), ["a", "b"])
    >>> s = p.select(np.eye(2), k=1, item_ids=["a", "b"])
    >>> s.method, len(s), bool(0.0 < s.propensities[0] <= 1.0)
    ('thompson-mc', 1, True)
    """

    algorithm = "hybrid_ts"

    def __init__(self, dim: int, v: float = 1.0, z: str | Sequence[int] = "bias",
                 lam: float = 1.0, mc_samples: int = 1000, max_items: int = 100_000,
                 gamma: float = 1.0, *, feature_space: str = "default",
                 seed: int | np.random.Generator | None = None) -> None:
        super().__init__(dim, z, lam, max_items, gamma, feature_space=feature_space, seed=seed)
        if not v > 0:
            raise InvalidInput(f"v must be > 0, got {v!r}")
        if isinstance(mc_samples, bool) or int(mc_samples) != mc_samples or mc_samples < 1:
            raise InvalidInput(f"mc_samples must be a positive integer, got {mc_samples!r}")
        self.v = float(v)
        self.mc_samples = int(mc_samples)

    def hyper_parameters(self) -> dict[str, Any]:
        return {"v": self.v, "mc_samples": self.mc_samples, **self._hybrid_hyper()}

    def _serving_hyper(self) -> dict[str, Any]:
        return {"exploration": "ts", "v": self.v, "mc_samples": self.mc_samples}

    def _score(self, X: np.ndarray, item_ids: list[str] | None) -> np.ndarray:
        G, off, _, _, _ = self._model.parts(X, item_ids)
        return G @ self._model.beta + off

    def _item_factors(self, slots: np.ndarray) -> np.ndarray:
        """Cholesky factors C_a (CCᵀ = A_a⁻¹) per slot; the prior λ⁻¹ᐟ²I for slot −1."""
        m = self._model
        C = np.broadcast_to(np.eye(m.k) / np.sqrt(m.lam), (len(slots), m.k, m.k)).copy()
        held = slots >= 0
        if held.any():
            C[held] = np.linalg.cholesky(m.ainv[slots[held]])
        return C

    def _sampler(self, X: np.ndarray, item_ids: list[str] | None, rng: np.random.Generator):
        """``draw(m)`` → (n, m) joint posterior draws of the candidates' scores."""
        m = self._model
        G, off, _, Z, slots = m.parts(X, item_ids)
        n = X.shape[0]
        if item_ids is None:  # every candidate is its own unseen item
            first, inv = np.arange(n), np.arange(n)
        else:  # duplicates of one item share one θ̃_a draw
            _, first, inv = np.unique(np.array(item_ids, dtype=object).astype(str),
                                      return_index=True, return_inverse=True)
        C = self._item_factors(slots[first])
        beta, factor = m.beta, m.linv.T

        def draw(size: int) -> np.ndarray:
            b = beta[:, None] + self.v * (factor @ rng.standard_normal((self.dim, size)))
            N = C @ rng.standard_normal((len(first), m.k, size))  # (u, k, size)
            return G @ b + off[:, None] + self.v * np.einsum("nk,nks->ns", Z, N[inv])
        return draw

    def sample_scores(self, X: np.ndarray, item_ids: Sequence[str] | None = None,
                      rng: np.random.Generator | None = None) -> np.ndarray:
        """One joint posterior draw of the candidates' scores."""
        X = self._check_X(X)
        ids = self._check_ids(item_ids, X.shape[0])
        return self._sampler(X, ids, self._rng if rng is None else rng)(1)[:, 0]

    def sample_params(self, item_ids: Sequence[str], size: int = 1,
                      rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``size`` joint draws: β̃ (size, d) and θ̃ (size, len(item_ids), k)."""
        ids = self._check_ids(item_ids, len(item_ids)) or []
        rng = self._rng if rng is None else rng
        m = self._model
        b = m.beta[:, None] + self.v * (m.linv.T @ rng.standard_normal((self.dim, size)))
        slots = np.array([m.slots.get(i, -1) for i in ids], dtype=np.intp)
        C = self._item_factors(slots)
        theta = np.zeros((size, len(ids), m.k))
        for j, s in enumerate(slots):
            mean = 0.0 if s < 0 else m.ainv[s] @ (m.c[s][:, None] - m.B[s] @ b)
            noise = C[j] @ rng.standard_normal((m.k, size))
            theta[:, j, :] = (mean + self.v * noise).T
        return b.T, theta

    def _select(self, X: np.ndarray, k: int, rng: np.random.Generator,
                bonus: np.ndarray | None, item_ids: list[str] | None) -> Slate:
        draw = self._sampler(X, item_ids, rng)
        offset = 0.0 if bonus is None else bonus
        shown = draw(1)[:, 0] + offset

        def sample_scores(size: int) -> np.ndarray:
            S = draw(size)
            return S if bonus is None else S + bonus[:, None]

        return sampled_slate(shown, k, sample_scores, self.mc_samples)
