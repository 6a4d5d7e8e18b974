"""Algorithm names → policy classes, and the factory the settings layer calls.

=============  ==========================================
name           class
=============  ==========================================
linucb         :class:`~bandits.linucb.LinUCB`
ts             :class:`~bandits.thompson.LinearTS`
egreedy        :class:`~bandits.baselines.EpsilonGreedy`
random         :class:`~bandits.baselines.UniformRandom`
popular        :class:`~bandits.baselines.MostPopular`
hybrid_linucb  :class:`~bandits.hybrid.HybridLinUCB`
hybrid_ts      :class:`~bandits.hybrid.HybridTS`
hybrid_serving :class:`~bandits.hybrid_serving.HybridServing` (what servers load)
=============  ==========================================
"""

from __future__ import annotations

import inspect
from typing import Any

from bandits.base import Policy, PolicyState
from bandits.baselines import EpsilonGreedy, MostPopular, UniformRandom
from bandits.exceptions import InvalidInput
from bandits.hybrid import HybridLinUCB, HybridTS
from bandits.hybrid_serving import HybridServing
from bandits.linucb import LinUCB
from bandits.thompson import LinearTS

__all__ = ["POLICIES", "policy_from_config", "policy_from_state"]

POLICIES: dict[str, type[Policy]] = {
    cls.algorithm: cls for cls in (LinUCB, LinearTS, EpsilonGreedy, UniformRandom, MostPopular,
                                   HybridLinUCB, HybridTS, HybridServing)
}


def policy_from_config(algorithm: str, dim: int, feature_space: str = "default",
                       seed: int | None = None, **hyper: Any) -> Policy:
    """Build a policy by algorithm name; unknown names or hyper-parameters are errors.

    Example
    -------
    >>> policy_from_config("linucb", dim=4, feature_space="fs", seed=0, alpha=0.5)
    LinUCB(algorithm='linucb', dim=4, n_updates=0, feature_space='fs', alpha=0.5, \
epsilon=0.0, lam=1.0, gamma=1.0, refactor_every=512)
    """
    try:
        cls = POLICIES[algorithm]
    except KeyError:
        raise InvalidInput(f"unknown algorithm {algorithm!r}; expected one of "
                           f"{sorted(POLICIES)}") from None
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "dim"}
    unknown = sorted(set(hyper) - accepted)
    if unknown:
        raise InvalidInput(f"unknown hyper-parameter(s) {unknown} for {algorithm!r}; "
                           f"accepted: {sorted(accepted - {'feature_space', 'seed'})}")
    return cls(dim=dim, feature_space=feature_space, seed=seed, **hyper)


def policy_from_state(state: PolicyState) -> Policy:
    """Rebuild any policy from its :class:`PolicyState`."""
    try:
        cls = POLICIES[state.algorithm]
    except KeyError:
        raise InvalidInput(f"unknown algorithm {state.algorithm!r}") from None
    return cls.restore(state)
