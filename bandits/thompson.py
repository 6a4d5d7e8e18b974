"""Linear Thompson sampling over one shared linear model.

Posterior (Gaussian likelihood with noise scale v, prior N(0, v²/λ·I))::

    θ̃ ~ N(θ, v²A⁻¹),   θ = A⁻¹b,   A = λI + Σφφᵀ

A draw is ``θ̃ = θ + v·C z`` with ``CCᵀ = A⁻¹`` (Cholesky) and z ~ N(0, I).
A slate is the top-k of ``Xθ̃ (+ bonus)`` for one draw. Its propensities have
no closed form; they are estimated from ``mc_samples`` further independent
draws (same rng, so seeded runs reproduce): ``p̂_i = c_i/M`` with standard
error ``sqrt(p_i(1−p_i)/M) ≤ 1/(2√M)`` (0.016 for M = 1000), reported per
shown item in ``Slate.propensity_se``. ``score`` is the deterministic
posterior mean ``θᵀφ``; use :meth:`LinearTS.sample_scores` for a draw.

Limits: the MC estimate costs O(M·n·d) per request — lower ``mc_samples`` on
hot paths, and note that IPS with estimated propensities inherits their error.

References
----------
Agrawal, Goyal (2013). Thompson sampling for contextual bandits with linear
payoffs. ICML.
Riquelme, Tucker, Snoek (2018). Deep Bayesian bandits showdown (NeuralLinear). ICLR.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bandits.exceptions import InvalidInput
from bandits.linear import LinearPolicy
from bandits.slates import Slate, sampled_slate

__all__ = ["LinearTS"]


class LinearTS(LinearPolicy):
    """Linear Thompson sampling (see module docstring).

    Example
    -------
    >>> import numpy as np
    >>> p = LinearTS(dim=2, v=0.5, seed=0, mc_samples=200, feature_space="fs")
    >>> p.update(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([1.0, 0.0]))
    >>> s = p.select(np.eye(2), k=1)
    >>> s.method, bool(0.0 < s.propensities[0] <= 1.0), len(s)
    ('thompson-mc', True, 1)
    """

    algorithm = "ts"

    def __init__(self, dim: int, v: float = 1.0, lam: float = 1.0, gamma: float = 1.0,
                 mc_samples: int = 1000, *, feature_space: str = "default",
                 seed: int | np.random.Generator | None = None,
                 rng: np.random.Generator | None = None, refactor_every: int = 512) -> None:
        super().__init__(dim, lam, gamma, feature_space=feature_space,
                         seed=rng if rng is not None else seed, refactor_every=refactor_every)
        if not v > 0:
            raise InvalidInput(f"v must be > 0, got {v!r}")
        if isinstance(mc_samples, bool) or int(mc_samples) != mc_samples or mc_samples < 1:
            raise InvalidInput(f"mc_samples must be a positive integer, got {mc_samples!r}")
        self.v = float(v)
        self.mc_samples = int(mc_samples)

    def hyper_parameters(self) -> dict[str, Any]:
        return {"v": self.v, "mc_samples": self.mc_samples, **self._linear_hyper()}

    @property
    def posterior_cov(self) -> np.ndarray:
        """``v²A⁻¹``."""
        return self.v ** 2 * self._model.a_inv

    def sample_theta(self, size: int = 1, rng: np.random.Generator | None = None) -> np.ndarray:
        """``size`` draws of θ̃ as rows, shape (size, d)."""
        rng = self._rng if rng is None else rng
        return self._draws(size, rng).T

    def sample_scores(self, X: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """One posterior draw of the scores ``Xθ̃``."""
        X = self._check_X(X)
        return X @ self._draws(1, self._rng if rng is None else rng)[:, 0]

    def _draws(self, m: int, rng: np.random.Generator) -> np.ndarray:
        """(d, m) independent θ̃ columns."""
        C = self._model.cov_factor()
        Z = rng.standard_normal((self.dim, m))
        return self._model.theta[:, None] + self.v * (C @ Z)

    def _score(self, X: np.ndarray, item_ids: list[str] | None) -> np.ndarray:
        return X @ self._model.theta

    def _select(self, X: np.ndarray, k: int, rng: np.random.Generator,
                bonus: np.ndarray | None, item_ids: list[str] | None) -> Slate:
        offset = 0.0 if bonus is None else bonus
        shown = X @ self._draws(1, rng)[:, 0] + offset

        def sample_scores(m: int) -> np.ndarray:
            S = X @ self._draws(m, rng)
            return S if bonus is None else S + bonus[:, None]

        return sampled_slate(shown, k, sample_scores, self.mc_samples)
