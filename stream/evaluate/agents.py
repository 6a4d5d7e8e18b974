"""fairstream's own policies (and the bandits baselines) as simulation agents.

A :class:`PolicyAgent` wraps any :class:`bandits.Policy`: it selects on the
shared φ, optionally adding the FairCo exposure bonus of a
:class:`bandits.ExposureController` (merit = the policy's predicted reward
``θᵀφ`` clipped at 0), and learns from its slate at once (one exact batch).
"""

from __future__ import annotations

import numpy as np

from bandits import ExposureController, Policy, predicted_reward
from stream.evaluate.simulation import Arrival

__all__ = ["PolicyAgent"]


class PolicyAgent:
    """A :class:`bandits.Policy` (plus an optional exposure controller) in the simulation.

    >>> import numpy as np
    >>> from bandits import LinUCB
    >>> agent = PolicyAgent("linucb", LinUCB(dim=3, alpha=0.5))
    >>> agent
    PolicyAgent(name='linucb', policy=LinUCB, controller=None)
    """

    def __init__(self, name: str, policy: Policy, controller: ExposureController | None = None,
                 *, needs_ids: bool = False) -> None:
        self.name = name
        self.policy = policy
        self.controller = controller
        self.needs_ids = needs_ids

    def __repr__(self) -> str:
        lam = None if self.controller is None else self.controller.lam
        return (f"PolicyAgent(name={self.name!r}, policy={type(self.policy).__name__}, "
                f"controller={lam})")

    def features(self, arr: Arrival) -> np.ndarray:
        return arr.X

    def select(self, arr: Arrival, k: int, rng: np.random.Generator) -> np.ndarray:
        X = self.features(arr)
        ids = arr.item_ids if self.needs_ids else None
        c = self.controller
        bonus = c.bonus(arr.groups) if c is not None and c.lam > 0 else None
        slate = self.policy.select(X, k, rng=rng, bonus=bonus, item_ids=ids)
        if c is not None and c.lam > 0:
            # θᵀφ (plus a hybrid's per-item terms)
            merit = np.maximum(predicted_reward(self.policy, X, ids), 0.0)
            c.observe(arr.groups, slate.indices, merit)
        return slate.indices

    def learn(self, arr: Arrival, shown: np.ndarray, rewards: np.ndarray) -> None:
        ids = [arr.item_ids[j] for j in shown] if self.needs_ids else None
        self.policy.update(self.features(arr)[shown], rewards, item_ids=ids)
