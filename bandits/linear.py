"""Shared plumbing of the policies built on one ridge model over φ(user, item).

:class:`LinearPolicy` owns a :class:`~bandits.ridge.RidgeModel` (A = λI + Σφφᵀ,
b = Σrφ, exact inverse) and implements update / merge / stats / state; its
subclasses only decide how to score and how to build a slate.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bandits.base import Policy
from bandits.exceptions import InvalidInput
from bandits.ridge import RidgeModel
from bandits.stats import SufficientStats

__all__ = ["LinearPolicy"]


class LinearPolicy(Policy):
    """A policy whose knowledge is one ridge model (abstract; see LinUCB, LinearTS)."""

    def __init__(self, dim: int, lam: float = 1.0, gamma: float = 1.0, *,
                 feature_space: str = "default", seed: int | np.random.Generator | None = None,
                 refactor_every: int = 512) -> None:
        super().__init__(dim, feature_space, seed)
        self._model = RidgeModel(self.dim, lam, gamma, feature_space=self.feature_space,
                                 refactor_every=refactor_every)

    @property
    def lam(self) -> float:
        return self._model.lam

    @property
    def gamma(self) -> float:
        return self._model.gamma

    @property
    def theta(self) -> np.ndarray:
        """``θ = A⁻¹b`` (float64, (d,))."""
        return self._model.theta.copy()

    @property
    def A(self) -> np.ndarray:
        """``A = λI + Σφφᵀ`` over everything learnt (own rows and merged statistics)."""
        return self._model.A

    @property
    def A_inv(self) -> np.ndarray:
        return self._model.a_inv.copy()

    @property
    def b(self) -> np.ndarray:
        return self._model.xty.copy()

    @property
    def n_observations(self) -> int:
        """Rows behind the model: own updates plus merged statistics."""
        return self._model.n

    @property
    def stats(self) -> SufficientStats:
        return self._model.own_stats

    @property
    def total_stats(self) -> SufficientStats:
        """Statistics of everything learnt, own plus merged (prior λI excluded)."""
        return self._model.total_stats

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Point estimate ``θᵀφ`` for every row."""
        return self._check_X(X) @ self._model.theta

    def widths(self, X: np.ndarray) -> np.ndarray:
        """Confidence widths ``sqrt(φᵀA⁻¹φ)`` for every row."""
        return self._model.widths(self._check_X(X))

    def refactor(self) -> None:
        """Recompute A⁻¹ from A now (normally done automatically)."""
        self._model.refactor()

    def _linear_hyper(self) -> dict[str, Any]:
        return {"lam": self.lam, "gamma": self.gamma,
                "refactor_every": self._model.refactor_every, "seed": self.seed}

    def _update(self, X: np.ndarray, r: np.ndarray, item_ids: list[str] | None) -> None:
        self._model.update(X, r)

    def _merge(self, stats: SufficientStats) -> None:
        if stats.dim != self.dim:
            raise InvalidInput(f"cannot merge statistics of dim {stats.dim} into dim {self.dim}")
        self._model.add(stats)

    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return self._model.get_state()

    def _set_state(self, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self._model.set_state(params, arrays)
