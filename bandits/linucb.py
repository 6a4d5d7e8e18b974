"""LinUCB: one shared linear model, optimism in the face of uncertainty.

::

    θ = A⁻¹b,   width(φ) = sqrt(φᵀA⁻¹φ),   score(φ) = θᵀφ + α·width(φ)

The slate is the top-k by score (ties to the lower candidate index), each
shown item with propensity 1. With ``epsilon > 0`` the slate is, with
probability ε, a uniformly random ordered k-subset instead; the propensity is
then the closed form ``(1−ε)·1[i ∈ topk] + ε·k/n`` (never 0).

Limits: one model shared by all users (personalisation comes only through
φ(user, item)); scoring is O(n·d²) per request; the γ < 1 path refactorises
A⁻¹ on every update call (see :mod:`bandits.ridge`).

References
----------
Li, Chu, Langford, Schapire (2010). A contextual-bandit approach to
personalized news article recommendation. WWW.
Chu, Li, Reyzin, Schapire (2011). Contextual bandits with linear payoff
functions. AISTATS.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bandits.exceptions import InvalidInput
from bandits.linear import LinearPolicy
from bandits.slates import TopKSelect

__all__ = ["LinUCB"]


class LinUCB(TopKSelect, LinearPolicy):
    """LinUCB over a shared linear model (see module docstring).

    Example
    -------
    >>> import numpy as np
    >>> p = LinUCB(dim=2, alpha=1.0, lam=1.0, feature_space="fs")
    >>> p.update(np.array([[1.0, 0.0]]), np.array([1.0]))
    >>> p.score(np.array([[1.0, 0.0], [0.0, 1.0]])).round(3).tolist()
    [1.207, 1.0]
    >>> p.select(np.array([[1.0, 0.0], [0.0, 1.0]]), k=1).indices.tolist()
    [0]
    """

    algorithm = "linucb"

    def __init__(self, dim: int, alpha: float = 1.0, lam: float = 1.0, gamma: float = 1.0,
                 epsilon: float = 0.0, *, feature_space: str = "default",
                 seed: int | np.random.Generator | None = None,
                 refactor_every: int = 512) -> None:
        super().__init__(dim, lam, gamma, feature_space=feature_space, seed=seed,
                         refactor_every=refactor_every)
        if not alpha >= 0:
            raise InvalidInput(f"alpha must be >= 0, got {alpha!r}")
        if not 0.0 <= epsilon <= 1.0:
            raise InvalidInput(f"epsilon must be in [0, 1], got {epsilon!r}")
        self.alpha = float(alpha)
        self.epsilon = float(epsilon)

    def hyper_parameters(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "epsilon": self.epsilon, **self._linear_hyper()}

    def _score(self, X: np.ndarray, item_ids: list[str] | None) -> np.ndarray:
        m = self._model
        return X @ m.theta + self.alpha * m.widths(X)

