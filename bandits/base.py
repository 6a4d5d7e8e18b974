"""The policy protocol every bandit in this package implements.

Verbs (river-style: public methods validate at the edge, then call a
private hook the subclass fills in)::

    score(X, item_ids=None)                  -> (n,) float64
    select(X, k, rng=None, bonus=None, item_ids=None) -> Slate (with propensities)
    update(X, r, item_ids=None)              learn from a batch, exactly
    stats                                    SufficientStats of this instance's own rows
    merge(stats)                             add another instance's statistics
    snapshot() / restore(state)              exact state round trip (no pickle)

Randomness: ``select`` uses the ``rng`` passed in, else the policy's own
generator (seeded by ``seed``). The own generator's state is part of the
snapshot, so a restored policy continues the same random sequence.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from bandits.exceptions import FeatureSpaceMismatch, InvalidInput
from bandits.slates import Slate
from bandits.stats import SufficientStats

__all__ = ["Policy", "PolicyState", "predicted_reward", "rng_from_state", "rng_state"]


@dataclass(frozen=True, eq=False)
class PolicyState:
    """Everything needed to rebuild a policy exactly: JSON-able fields plus float arrays."""

    algorithm: str
    dim: int
    feature_space: str
    hyper: dict[str, Any]
    n_updates: int
    rng: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _from_jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return np.array(obj["__ndarray__"], dtype=obj["dtype"])
        return {k: _from_jsonable(v) for k, v in obj.items()}
    return obj


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """The bit generator's state as plain JSON-able data (arrays become tagged lists)."""
    return _jsonable(rng.bit_generator.state)


_BIT_GENERATORS = {"PCG64": np.random.PCG64, "PCG64DXSM": np.random.PCG64DXSM,
                   "Philox": np.random.Philox, "SFC64": np.random.SFC64,
                   "MT19937": np.random.MT19937}


def rng_from_state(state: dict[str, Any]) -> np.random.Generator:
    """Inverse of :func:`rng_state`."""
    name = state.get("bit_generator") if isinstance(state, dict) else None
    if name not in _BIT_GENERATORS:
        raise InvalidInput(f"unknown bit generator {name!r}")
    bg = _BIT_GENERATORS[name]()
    bg.state = _from_jsonable(state)
    return np.random.Generator(bg)


class Policy(abc.ABC):
    """Base class of all policies (see module docstring for the protocol).

    Subclasses set ``algorithm`` and implement ``_score``, ``_select``, ``_update``,
    ``_merge``, ``stats``, ``hyper_parameters`` and ``_get_state``/``_set_state``.

    Example
    -------
    >>> import numpy as np
    >>> from bandits.baselines import UniformRandom
    >>> p: Policy = UniformRandom(dim=3, feature_space="fs", seed=0)
    >>> s = p.select(np.zeros((10, 3)), k=4)
    >>> len(s), float(s.propensities[0])
    (4, 0.4)
    """

    algorithm: ClassVar[str] = ""
    #: Whether ``update`` needs ``item_ids`` (and ``score``/``select`` use them): a caller
    #: that has ids passes them only then, so shared-model policies pay nothing for them.
    uses_item_ids: ClassVar[bool] = False

    def __init__(self, dim: int, feature_space: str = "default",
                 seed: int | np.random.Generator | None = None) -> None:
        if isinstance(dim, bool) or int(dim) != dim or dim < 1:
            raise InvalidInput(f"dim must be a positive integer, got {dim!r}")
        if not isinstance(feature_space, str) or not feature_space:
            raise InvalidInput("feature_space must be a non-empty str")
        self.dim = int(dim)
        self.feature_space = feature_space
        self.seed = seed if seed is None or isinstance(seed, int) else None
        self._rng = np.random.default_rng(seed)
        self.n_updates = 0
        #: snapshot version this instance was loaded from (None if never loaded)
        self.version: int | None = None
        #: verified header of that snapshot (None if never loaded)
        self.snapshot_header: dict[str, Any] | None = None

    # -- validation at the edge ---------------------------------------------
    def _check_X(self, X: Any, name: str = "X") -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise InvalidInput(f"{name} must have shape (n, {self.dim}), got {X.shape}")
        if not np.all(np.isfinite(X)):
            raise InvalidInput(f"{name} contains non-finite values")
        return X

    @staticmethod
    def _check_vector(v: Any, n: int, name: str) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        if v.shape != (n,):
            raise InvalidInput(f"{name} must have shape ({n},), got {v.shape}")
        if not np.all(np.isfinite(v)):
            raise InvalidInput(f"{name} contains non-finite values")
        return v

    @staticmethod
    def _check_ids(item_ids: Sequence[str] | None, n: int) -> list[str] | None:
        if item_ids is None:
            return None
        ids = [str(i) for i in item_ids]
        if len(ids) != n:
            raise InvalidInput(f"item_ids must have length {n}, got {len(ids)}")
        return ids

    # -- public verbs -------------------------------------------------------
    def score(self, X: np.ndarray, item_ids: Sequence[str] | None = None) -> np.ndarray:
        """Deterministic score of every candidate row, shape (n,), float64."""
        X = self._check_X(X)
        return self._score(X, self._check_ids(item_ids, X.shape[0]))

    def select(self, X: np.ndarray, k: int, rng: np.random.Generator | None = None,
               bonus: np.ndarray | None = None,
               item_ids: Sequence[str] | None = None) -> Slate:
        """Choose a slate of ``min(k, n)`` candidates; ``bonus`` (n,) is added to scores first."""
        X = self._check_X(X)
        n = X.shape[0]
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise InvalidInput(f"k must be a positive integer, got {k!r}")
        b = None if bonus is None else self._check_vector(bonus, n, "bonus")
        ids = self._check_ids(item_ids, n)
        return self._select(X, int(k), self._rng if rng is None else rng, b, ids)

    def update(self, X: np.ndarray, r: np.ndarray,
               item_ids: Sequence[str] | None = None) -> None:
        """Learn from a batch of m rows (m, dim) with rewards (m,); ``n_updates += m``."""
        X = self._check_X(X)
        r = self._check_vector(r, X.shape[0], "r")
        self._update(X, r, self._check_ids(item_ids, X.shape[0]))
        self.n_updates += X.shape[0]

    def merge(self, stats: SufficientStats) -> None:
        """Add another instance's statistics (``other.stats``, or a delta of them)."""
        if not isinstance(stats, SufficientStats):
            raise InvalidInput(f"merge expects SufficientStats, got {type(stats).__name__}")
        if stats.feature_space != self.feature_space:
            raise FeatureSpaceMismatch(self.feature_space, stats.feature_space)
        self._merge(stats)

    def snapshot(self) -> PolicyState:
        """Exact copy of the state as a :class:`PolicyState` (arrays copied)."""
        params, arrays = self._get_state()
        return PolicyState(self.algorithm, self.dim, self.feature_space,
                           dict(self.hyper_parameters()), self.n_updates, rng_state(self._rng),
                           params, {k: np.array(v, dtype=np.float64, copy=True)
                                    for k, v in arrays.items()})

    @classmethod
    def restore(cls, state: PolicyState) -> Policy:
        """Rebuild a policy from :meth:`snapshot` output."""
        if state.algorithm != cls.algorithm:
            raise InvalidInput(f"state is for {state.algorithm!r}, not {cls.algorithm!r}")
        policy = cls(dim=state.dim, feature_space=state.feature_space, **state.hyper)
        policy._rng = rng_from_state(state.rng)
        policy.n_updates = int(state.n_updates)
        policy._set_state(state.params, state.arrays)
        return policy

    # -- hooks --------------------------------------------------------------
    @property
    @abc.abstractmethod
    def stats(self) -> SufficientStats:
        """Statistics of the rows this instance itself learnt from (not merged ones)."""

    @abc.abstractmethod
    def hyper_parameters(self) -> dict[str, Any]:
        """Constructor keyword arguments (besides dim / feature_space), JSON-able."""

    @abc.abstractmethod
    def _score(self, X: np.ndarray, item_ids: list[str] | None) -> np.ndarray: ...

    @abc.abstractmethod
    def _select(self, X: np.ndarray, k: int, rng: np.random.Generator,
                bonus: np.ndarray | None, item_ids: list[str] | None) -> Slate: ...

    @abc.abstractmethod
    def _update(self, X: np.ndarray, r: np.ndarray, item_ids: list[str] | None) -> None: ...

    @abc.abstractmethod
    def _merge(self, stats: SufficientStats) -> None: ...

    @abc.abstractmethod
    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]: ...

    @abc.abstractmethod
    def _set_state(self, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> None: ...

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={v!r}" for k, v in self.hyper_parameters().items()
                          if k != "seed")
        return (f"{type(self).__name__}(algorithm={self.algorithm!r}, dim={self.dim}, "
                f"n_updates={self.n_updates}, feature_space={self.feature_space!r}"
                f"{', ' + hyper if hyper else ''})")


def predicted_reward(policy: Policy, X: np.ndarray,
                     item_ids: Sequence[str] | None = None) -> np.ndarray:
    """The policy's mean reward estimate per row: ``predict`` where it has one (with the
    rows' item ids, which a hybrid's per-item terms need), else its score."""
    if not hasattr(policy, "predict"):
        return policy.score(X, item_ids=item_ids)
    return policy.predict(X) if item_ids is None else policy.predict(X, item_ids=item_ids)
