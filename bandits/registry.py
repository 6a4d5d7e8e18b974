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

import copy
import inspect
from typing import Any

from bandits.base import Policy, PolicyState
from bandits.baselines import EpsilonGreedy, MostPopular, UniformRandom
from bandits.exceptions import InvalidInput
from bandits.hybrid import HybridLinUCB, HybridTS
from bandits.hybrid_serving import HybridServing
from bandits.linear import LinearPolicy
from bandits.linucb import LinUCB
from bandits.thompson import LinearTS

__all__ = ["POLICIES", "policy_from_config", "policy_from_state", "with_exploration"]

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


def with_exploration(policy: Policy, exploration: str, *, alpha: float | None = None,
                     v: float = 1.0, mc_samples: int = 1000) -> Policy:
    """``policy``'s knowledge under another exploration rule, for serving (an online
    experiment's arm): ``"ucb"`` (LinUCB, at ``alpha``, else the policy's own) or
    ``"ts"`` (linear Thompson sampling: ``v``, ``mc_samples``). A linear policy's copy
    shares its ridge model, so it is read-only: serve it, do not update it. A hybrid
    serving view switches its own rule. Anything else raises
    :class:`~bandits.exceptions.InvalidInput`.

    >>> import numpy as np
    >>> p = LinUCB(dim=2, alpha=0.5, feature_space="fs", seed=0)
    >>> p.update(np.eye(2), np.array([1.0, 0.0]))
    >>> ts = with_exploration(p, "ts", v=0.3)
    >>> ts.algorithm, bool(np.allclose(ts.theta, p.theta)), ts.v
    ('ts', True, 0.3)
    >>> with_exploration(p, "ucb", alpha=2.0).score(np.eye(2)).round(3).tolist()
    [1.914, 1.414]
    """
    if exploration not in ("ucb", "ts"):
        raise InvalidInput(f"exploration must be 'ucb' or 'ts', got {exploration!r}")
    if isinstance(policy, HybridServing):
        view = copy.copy(policy)
        view.exploration = exploration
        if alpha is not None:
            view.alpha = float(alpha)
        return view
    if not isinstance(policy, LinearPolicy):
        raise InvalidInput(f"{policy.algorithm} has no exploration rule to change")
    common = {"lam": policy.lam, "gamma": policy.gamma, "feature_space": policy.feature_space}
    if exploration == "ucb":
        out: LinearPolicy = LinUCB(
            policy.dim, alpha=alpha if alpha is not None else getattr(policy, "alpha", 1.0),
            seed=policy._rng, **common)
    else:
        out = LinearTS(policy.dim, v=v, mc_samples=mc_samples, rng=policy._rng, **common)
    out._model = policy._model  # the same statistics, read-only here
    return out
