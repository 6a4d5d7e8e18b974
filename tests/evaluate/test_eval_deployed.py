"""The 'deployed' agent drives the worker's own LearningState, as the worker does."""

from __future__ import annotations

import numpy as np
from test_eval_peers import _world

from stream.core.catalog import Catalog
from stream.core.join import Pending
from stream.core.state import LearningState
from stream.evaluate.deployed import DeployedAgent, _Embedded
from stream.evaluate.simulation import draw_stream, run_seed
from stream.events import CatalogItem

BANDIT = {"algorithm": "hybrid_linucb", "alpha": 0.3, "lam": 1.0}


class Recording(DeployedAgent):
    """Keeps every closed impression it learnt, in order."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.learnt: list[Pending] = []

    def learn(self, arr, shown, rewards):
        self.learnt.append(self._pending)
        super().learn(arr, shown, rewards)


def test_its_state_is_a_worker_state_fed_the_same_impressions():
    world = _world(holdout=0.25, n_arrivals=240)
    agent = Recording("deployed", world, BANDIT, seed=0)
    assert agent.state.policy.algorithm == "hybrid_linucb"
    run_seed(world, draw_stream(world, 0), [agent], progress=False)

    # A worker's state, built the way the worker builds one, fed the same impressions.
    catalog = Catalog(384)
    enc = _Embedded(world)
    new = set(np.flatnonzero(world.new_items).tolist())
    tail = world.tail

    def add(ids):
        catalog.add([CatalogItem(item_id=i, text=i, groups={
            "popularity": "tail" if tail[world.item_ids.index(i)] else "head"}) for i in ids],
            enc)

    add([i for j, i in enumerate(world.item_ids) if j not in new])
    ref = LearningState.fresh(agent.settings, catalog)
    for p in agent.learnt:
        missing = [i for i in p.items if i not in catalog.index]
        if missing:
            add(missing)
        ref.learn([Pending(p.request_id, p.user_id, p.ts, p.items, p.propensities, p.user,
                           list(p.rewards))])
    assert ref.policy.n_updates == agent.state.policy.n_updates == 5 * len(agent.learnt)
    np.testing.assert_allclose(agent.state.policy.beta, ref.policy.beta, rtol=1e-10)
    held = agent.state.policy.item_ids
    assert held and held == ref.policy.item_ids
    # held-back items entered the catalog mid-stream and got per-item terms of their own
    late = [world.item_ids[j] for j in new]
    assert any(i in agent.state.catalog.index for i in late)
    assert any(i in held for i in late)


def test_published_staleness_selects_with_the_serving_view():
    world = _world(n_arrivals=120)
    agent = DeployedAgent("deployed_published", world, BANDIT, seed=0, publish_every=50)
    run_seed(world, draw_stream(world, 0), [agent], progress=False)
    assert agent._published.algorithm == "hybrid_serving"
    assert agent._published.n_updates <= agent.state.policy.n_updates
