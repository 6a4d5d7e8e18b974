"""NeuralLinear in the simulation: LinUCB over an adapter fine-tuned on the replay buffer.

Every shown (item, profile, user attrs, reward) row goes into a
:class:`learners.ReplayBuffer`; every ``every`` arrivals a synchronous
:class:`learners.FineTuner` run trains a clone of the adapter (reward
prediction, BCE), and the LinUCB statistics are rebuilt in the new feature
space from the whole buffer (``A = λI + XᵀX``, ``b = Xᵀr``, the NeuralLinear
recipe via :func:`learners.refit_statistics`), so the policy never mixes spaces.
Until the first fine-tune it is exactly the fixed-projection LinUCB.

References
----------
Riquelme, Tucker, Snoek (2018). Deep Bayesian bandits showdown. ICLR.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bandits import ExposureController, Policy
from learners import FeatureMap, FineTuner, ReplayBuffer, refit_statistics
from stream.evaluate.agents import PolicyAgent
from stream.evaluate.simulation import Arrival, EvalWorld, phi

__all__ = ["NeuralLinearAgent"]


class NeuralLinearAgent(PolicyAgent):
    """LinUCB (or any linear policy) whose feature space is periodically re-learnt."""

    def __init__(self, name: str, world: EvalWorld, make_policy: Callable[[FeatureMap], Policy],
                 controller: ExposureController | None = None, *, every: int = 2000,
                 steps: int = 200, batch_size: int = 256, lr: float = 3e-3,
                 capacity: int = 200_000, seed: int = 0) -> None:
        self.world = world
        self.fmap = world.fmap
        self._make = make_policy
        super().__init__(name, make_policy(self.fmap), controller)
        self.every = int(every)
        self.buffer = ReplayBuffer(capacity=capacity, seed=seed, emb_dim=world.emb.shape[1])
        self.tuner = FineTuner(steps=steps, batch_size=batch_size, lr=lr, device="cpu",
                               every_events=None, threads=1, seed=seed, compute_refit=False,
                               duty_cycle=1.0)
        self._adapted = world.adapted
        self._cache: tuple[int, np.ndarray] | None = None
        self.finetunes: list[dict[str, float]] = []
        self._arrivals = 0

    def features(self, arr: Arrival) -> np.ndarray:
        if self.fmap is self.world.fmap:
            return arr.X
        if self._cache is None or self._cache[0] != arr.t:
            ap = self.fmap.adapt(arr.profile[None, :])[0]
            self._cache = (arr.t, phi(self._adapted[arr.cands], ap, arr.codes, self.fmap.dim))
        return self._cache[1]

    def learn(self, arr: Arrival, shown: np.ndarray, rewards: np.ndarray) -> None:
        super().learn(arr, shown, rewards)
        for j, r in zip(shown.tolist(), rewards.tolist(), strict=True):
            self.buffer.add(self.world.emb[arr.cands[j]], arr.profile, arr.attrs, r)
        self._arrivals += 1
        if self._arrivals % self.every == 0:
            self._refit()

    def _refit(self) -> None:
        result = self.tuner.run(self.buffer, self.fmap)
        self.fmap = result.fmap
        self._adapted = self.fmap.adapt(self.world.emb)
        self._cache = None
        X, r = refit_statistics(self.buffer, self.fmap)
        policy = self._make(self.fmap)
        for lo in range(0, X.shape[0], 50_000):
            policy.update(X[lo:lo + 50_000], r[lo:lo + 50_000])
        self.policy = policy
        self.finetunes.append({"rows": float(result.rows), "loss_before": result.loss_before,
                               "loss_after": result.loss_after,
                               "seconds": result.train_seconds})
