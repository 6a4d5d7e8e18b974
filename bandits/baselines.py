"""Baseline policies: uniform random, most-popular, ε-greedy.

* :class:`UniformRandom` — a uniformly random ordered k-subset, ``p_i = k/n``.
  Learns nothing (counts rows only); the logging policy of choice for
  unbiased offline evaluation.
* :class:`MostPopular` — ranks candidates by the running reward sum of their
  item id, ``score(i) = Σ r over past impressions of i`` (unknown ids score 0),
  top-k with an optional ε-mix (closed-form propensities as in
  :mod:`bandits.slates`). Ignores φ.
* :class:`EpsilonGreedy` — the same ridge model as LinUCB, greedy score
  ``θᵀφ`` (no width), slate-level ε-mix:
  ``p_i = (1−ε)·1[i ∈ topk] + ε·k/n``.

References
----------
Sutton, Barto (2018). Reinforcement Learning: An Introduction, §2.2 (ε-greedy).
Li, Chu, Langford, Wang (2011). Unbiased offline evaluation of
contextual-bandit-based news article recommendation algorithms. WSDM.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bandits.base import Policy
from bandits.exceptions import InvalidInput
from bandits.linear import LinearPolicy
from bandits.slates import Slate, TopKSelect, uniform_slate
from bandits.stats import SufficientStats

__all__ = ["EpsilonGreedy", "MostPopular", "UniformRandom"]


def _check_epsilon(epsilon: float) -> float:
    if not 0.0 <= epsilon <= 1.0:
        raise InvalidInput(f"epsilon must be in [0, 1], got {epsilon!r}")
    return float(epsilon)


class UniformRandom(Policy):
    """Uniformly random slates.

    Example
    -------
    >>> import numpy as np
    >>> p = UniformRandom(dim=2, feature_space="fs", seed=1)
    >>> s = p.select(np.zeros((4, 2)), k=2)
    >>> s.propensities.tolist(), s.candidate_propensities.sum()
    ([0.5, 0.5], np.float64(2.0))
    """

    algorithm = "random"

    def __init__(self, dim: int, *, feature_space: str = "default",
                 seed: int | np.random.Generator | None = None) -> None:
        super().__init__(dim, feature_space, seed)
        self._n = 0

    def hyper_parameters(self) -> dict[str, Any]:
        return {"seed": self.seed}

    @property
    def stats(self) -> SufficientStats:
        return SufficientStats(np.zeros((0, 0)), np.zeros(0), self.n_updates, self.feature_space)

    def _score(self, X: np.ndarray, item_ids: list[str] | None) -> np.ndarray:
        return np.zeros(X.shape[0])

    def _select(self, X: np.ndarray, k: int, rng: np.random.Generator,
                bonus: np.ndarray | None, item_ids: list[str] | None) -> Slate:
        s = np.zeros(X.shape[0]) if bonus is None else bonus
        return uniform_slate(s, k, rng)

    def _update(self, X: np.ndarray, r: np.ndarray, item_ids: list[str] | None) -> None:
        self._n += X.shape[0]

    def _merge(self, stats: SufficientStats) -> None:
        self._n += stats.n

    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"n": self._n}, {}

    def _set_state(self, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self._n = int(params["n"])


class MostPopular(TopKSelect, Policy):
    """Most-popular: rank by the running reward sum per item id.

    Example
    -------
    >>> import numpy as np
    >>> p = MostPopular(dim=1, feature_space="fs")
    >>> p.update(np.zeros((3, 1)), np.array([1.0, 1.0, 0.0]), item_ids=["a", "b", "b"])
    >>> p.update(np.zeros((1, 1)), np.array([1.0]), item_ids=["b"])
    >>> p.select(np.zeros((3, 1)), k=2, item_ids=["a", "b", "c"]).indices.tolist()
    [1, 0]
    """

    algorithm = "popular"
    uses_item_ids = True

    def __init__(self, dim: int, epsilon: float = 0.0, *, feature_space: str = "default",
                 seed: int | np.random.Generator | None = None) -> None:
        super().__init__(dim, feature_space, seed)
        self.epsilon = _check_epsilon(epsilon)
        self._counts: dict[str, float] = {}
        self._own: dict[str, float] = {}
        self._own_n = 0

    def hyper_parameters(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon, "seed": self.seed}

    @property
    def counts(self) -> dict[str, float]:
        """Reward sum per item id, own rows plus merged statistics."""
        return dict(self._counts)

    @property
    def stats(self) -> SufficientStats:
        return SufficientStats(np.zeros((0, 0)), np.zeros(0), self._own_n, self.feature_space,
                               self._own)

    def _need_ids(self, item_ids: list[str] | None) -> list[str]:
        if item_ids is None:
            raise InvalidInput("MostPopular needs item_ids")
        return item_ids

    def _score(self, X: np.ndarray, item_ids: list[str] | None) -> np.ndarray:
        ids = self._need_ids(item_ids)
        return np.array([self._counts.get(i, 0.0) for i in ids], dtype=np.float64)

    def _update(self, X: np.ndarray, r: np.ndarray, item_ids: list[str] | None) -> None:
        for i, reward in zip(self._need_ids(item_ids), r.tolist(), strict=True):
            self._counts[i] = self._counts.get(i, 0.0) + reward
            self._own[i] = self._own.get(i, 0.0) + reward
        self._own_n += X.shape[0]

    def _merge(self, stats: SufficientStats) -> None:
        for i, value in stats.item_counts.items():
            self._counts[i] = self._counts.get(i, 0.0) + value

    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        ids = list(self._counts)
        own_ids = list(self._own)
        params = {"ids": ids, "own_ids": own_ids, "own_n": self._own_n}
        arrays = {"counts": np.array([self._counts[i] for i in ids], dtype=np.float64),
                  "own_counts": np.array([self._own[i] for i in own_ids], dtype=np.float64)}
        return params, arrays

    def _set_state(self, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        ids, own_ids = list(params["ids"]), list(params["own_ids"])
        counts, own = np.asarray(arrays["counts"]), np.asarray(arrays["own_counts"])
        if counts.shape != (len(ids),) or own.shape != (len(own_ids),):
            raise InvalidInput("MostPopular state: ids and counts differ in length")
        self._counts = dict(zip(ids, counts.tolist(), strict=True))
        self._own = dict(zip(own_ids, own.tolist(), strict=True))
        self._own_n = int(params["own_n"])


class EpsilonGreedy(TopKSelect, LinearPolicy):
    """ε-greedy over the shared ridge model: greedy ``θᵀφ``, uniform slate with prob ε.

    Example
    -------
    >>> import numpy as np
    >>> p = EpsilonGreedy(dim=2, epsilon=0.2, feature_space="fs", seed=0)
    >>> p.update(np.array([[1.0, 0.0]]), np.array([1.0]))
    >>> s = p.select(np.eye(2), k=1)
    >>> s.candidate_propensities.tolist()
    [0.9, 0.1]
    """

    algorithm = "egreedy"

    def __init__(self, dim: int, epsilon: float = 0.1, lam: float = 1.0, gamma: float = 1.0, *,
                 feature_space: str = "default", seed: int | np.random.Generator | None = None,
                 refactor_every: int = 512) -> None:
        super().__init__(dim, lam, gamma, feature_space=feature_space, seed=seed,
                         refactor_every=refactor_every)
        self.epsilon = _check_epsilon(epsilon)

    def hyper_parameters(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon, **self._linear_hyper()}

    def _score(self, X: np.ndarray, item_ids: list[str] | None) -> np.ndarray:
        return X @ self._model.theta

