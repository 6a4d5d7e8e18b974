"""fairstream as deployed, in the simulation: the worker's own :class:`LearningState`.

A :class:`DeployedAgent` holds a :class:`~stream.core.state.LearningState` built
from :class:`~stream.settings.Settings` exactly as a worker builds one (PCA
adapter of the catalog, the configured policy, the profile store), and drives
it with the same calls the worker and the server make:

* ``select``: what ``fairstream serve`` does with a policy: φ from the user's
  profile as the state has learnt it from its own clicks, then the policy's
  slate. With ``publish_every=None`` that policy is the state's own, current one
  (every agent in the simulation learns before the next arrival); with
  ``publish_every=n`` it is what the worker would have published, refreshed every
  ``n`` learned rows (a hybrid as its serving view,
  :meth:`bandits.HybridLinUCB.serving_view`), which measures what publishing
  staleness costs;
* impression discounting: as the server, items shown to the user and not clicked
  lose ``serve.impression_discount`` of score for ``serve.impression_discount_ttl_s``
  (time here is the arrival number, so over a 20,000-arrival run it never expires);
* ``learn``: the slate becomes a closed :class:`~stream.core.join.Pending`
  impression with the rewards it got, and :meth:`LearningState.learn` takes it
  (profile walk, batched policy update, replay buffer, fairness sums).

So its φ is not the world's fixed φ (which uses the *logged* history); it is what
a deployed fairstream would have. Items enter the catalog when they are first
a candidate (a held-back item arrives mid-stream as a new catalog item, scored
from its embedding). Time is the arrival number.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bandits import ExposureController, Policy, predicted_reward
from stream.core.catalog import Catalog
from stream.core.join import Pending
from stream.core.recent import recent_impressions
from stream.core.state import LearningState
from stream.evaluate.simulation import Arrival, EvalWorld
from stream.events import CatalogItem
from stream.settings import Settings

__all__ = ["DeployedAgent"]


class _Embedded:
    """The world's frozen MiniLM embeddings, looked up by item id (the catalog's encoder)."""

    def __init__(self, world: EvalWorld) -> None:
        self.dim = world.emb.shape[1]
        self._emb = world.emb
        self.row = {item: j for j, item in enumerate(world.item_ids)}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self._emb[[self.row[t] for t in texts]]


class DeployedAgent:
    """The worker's learning path as a simulation agent (see module doc).

    ``bandit``: overrides of the ``[bandit]`` settings (algorithm and its knobs).
    ``replay_rows``: keep up to that many learned rows in the state's replay buffer
    (``state.buffer``, as a worker with the fine-tune on does; 0 keeps none). The
    agent itself never fine-tunes.
    """

    def __init__(self, name: str, world: EvalWorld, bandit: dict[str, Any], seed: int = 0,
                 controller: ExposureController | None = None,
                 settings: Settings | None = None, publish_every: int | None = None,
                 replay_rows: int = 0) -> None:
        base = settings or Settings()
        self.name = name
        self.controller = controller
        finetune: dict[str, Any] = {"enabled": replay_rows > 0}
        if replay_rows > 0:
            finetune |= {"buffer_capacity": replay_rows,
                         "validation_rows": min(replay_rows, base.finetune.validation_rows)}
        self.settings = base.replace(bandit={**bandit, "seed": seed}, finetune=finetune,
                                     features={"dim": world.dim, "seed": seed})
        self._world = world
        self._encoder = _Embedded(world)
        self._req = 0
        self._pending: Pending | None = None
        catalog = Catalog(world.emb.shape[1])
        new = world.new_items if len(world.new_items) else np.zeros(len(world.item_ids), bool)
        self._add(catalog, [i for i, n in zip(world.item_ids, new.tolist(), strict=True)
                            if not n])
        self.state = LearningState.fresh(self.settings, catalog)
        # What the server does between policies: discount what it showed and was not clicked.
        self.recent = recent_impressions(self.settings)
        self.publish_every = publish_every
        self._since_publish = 0
        self._published = self._publish() if publish_every else None

    def __repr__(self) -> str:
        return f"DeployedAgent(name={self.name!r}, policy={self.state.policy!r})"

    def _publish(self) -> Policy:
        policy = self.state.policy
        view = getattr(policy, "serving_view", None)
        return view() if view is not None else policy.restore(policy.snapshot())

    def _add(self, catalog: Catalog, ids: Sequence[str]) -> None:
        tail = self._world.tail
        catalog.add([CatalogItem(item_id=i, text=i, groups={
            "popularity": "tail" if tail[self._encoder.row[i]] else "head"}) for i in ids],
            self._encoder)

    def _ensure(self, arr: Arrival) -> None:
        """New items enter the catalog when they are first a candidate."""
        missing = [i for i in arr.item_ids if i not in self.state.catalog.index]
        if missing:
            self._add(self.state.catalog, missing)

    def select(self, arr: Arrival, k: int, rng: np.random.Generator) -> np.ndarray:
        """What the server does with a published policy: φ from the user's profile,
        the policy's slate (with the exposure bonus when a controller is set)."""
        self._ensure(arr)
        state, c = self.state, self.controller
        policy = self._published or state.policy
        user_id = self._world.user_ids[arr.user]
        X = state.features(user_id, arr.attrs, arr.item_ids, now=float(arr.t))
        ids = list(arr.item_ids) if policy.uses_item_ids else None
        bonus = c.bonus(arr.groups) if c is not None and c.lam > 0 else None
        offset = bonus
        if self.recent is not None:
            seen = self.recent.penalties(user_id, arr.item_ids, float(arr.t))
            if seen is not None:
                offset = seen if offset is None else offset + seen
        slate = policy.select(X, k, rng=rng, bonus=offset, item_ids=ids)
        if bonus is not None:
            merit = predicted_reward(policy, X, ids) if c.needs_merit else None
            c.observe(arr.groups, slate.indices, merit)
        if self.recent is not None:
            self.recent.shown(user_id, [arr.item_ids[j] for j in slate.indices.tolist()],
                              float(arr.t))
        self._req += 1
        self._pending = Pending(f"r{self._req}", user_id, float(arr.t),
                                tuple(arr.item_ids[j] for j in slate.indices.tolist()),
                                tuple(slate.propensities.tolist()), arr.attrs)
        return slate.indices

    def learn(self, arr: Arrival, shown: np.ndarray, rewards: np.ndarray) -> None:
        pending, self._pending = self._pending, None
        assert pending is not None and [arr.item_ids[j] for j in shown] == list(pending.items)
        pending.rewards = [float(r) for r in rewards]
        if self.recent is not None:
            for item, r in zip(pending.items, pending.rewards, strict=True):
                if r > 0:
                    self.recent.clicked(pending.user_id, item)
        self._since_publish += self.state.learn([pending]).rows
        if self.publish_every and self._since_publish >= self.publish_every:
            self._published, self._since_publish = self._publish(), 0
