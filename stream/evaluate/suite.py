"""The roster of `fairstream eval sim`: fairstream's policies and the peers, by name.

Names starting with ``vw``, ``random``, ``popular`` or ``river`` are peers;
the rest are fairstream: ``deployed`` (the worker's own :class:`LearningState`
with the hybrid LinUCB, see :mod:`stream.evaluate.deployed`; ``deployed_published``
selects with what the worker would have published, every
``policy.publish_every_updates`` rows, as a server does; both discount what they
showed a user and was not clicked, as the server does, and ``deployed_published_plain``
is ``deployed_published`` without that), the policies alone
on the world's fixed φ (``hybrid_linucb``, ``hybrid_ts``, ``linucb``, ``ts``,
``neural_linear``), each with a ``_fair`` variant that adds the exposure
controller, and ``<base>_lam<λ>`` for the trade-off sweep. ``vw_dense_phi*``
is VW on fairstream's dense φ blocks; every other ``vw*`` gets sparse ids and ``-q`` crosses (see
:mod:`stream.evaluate.peers`). :data:`TUNING_GRIDS` holds the equal-size grids
that :mod:`stream.evaluate.tuning` searches before the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bandits import (
    ExposureController,
    HybridLinUCB,
    HybridTS,
    LinearTS,
    LinUCB,
    MostPopular,
    UniformRandom,
)
from learners import FeatureMap
from learners.features import context_columns
from stream.evaluate.agents import PolicyAgent
from stream.evaluate.deployed import DeployedAgent
from stream.evaluate.neural import NeuralLinearAgent
from stream.evaluate.peers import RiverAgent, VWAgent, VWSlateAgent, river_policy
from stream.evaluate.simulation import Agent, EvalWorld
from stream.settings import Settings

__all__ = ["DEFAULT_PEERS", "FAIRSTREAM", "HYPER", "PEER_PREFIXES", "TUNING_GRIDS", "VW_CONFIGS",
           "VW_INTERACTIONS", "is_peer", "make_agent", "make_agents"]

PEER_PREFIXES = ("vw", "random", "popular", "river")

#: fairstream hyper-parameters used in the headline run (see the report for the search).
HYPER: dict[str, dict[str, Any]] = {
    "linucb": {"alpha": 0.1, "lam": 1.0},
    "ts": {"v": 0.03, "lam": 1.0, "mc_samples": 16},
    "neural_linear": {"alpha": 0.1, "lam": 1.0, "every": 2000, "steps": 300,
                      "batch_size": 256, "lr": 3e-3},
    "hybrid_linucb": {"alpha": 0.3, "lam": 1.0},
    "hybrid_ts": {"v": 0.05, "lam": 1.0, "mc_samples": 16},
    "fair_lam": 4e-05,
    "fair_target": "candidates",
}

#: The ``-q`` crosses of the id-based VW peers: user×item, history×item, attributes×genres.
VW_INTERACTIONS = "-q ui -q hi -q ag"

#: VW options per peer name (after ``--cb_explore_adf``); tuned knobs are appended.
VW_CONFIGS: dict[str, str] = {
    "vw_squarecb": f"--squarecb --cb_type mtr {VW_INTERACTIONS}",
    "vw_epsilon": f"--epsilon 0.05 {VW_INTERACTIONS}",
    "vw_dense_phi_squarecb": "--squarecb -q UA",
}
VW_SLATE_CONFIGS: dict[str, str] = {"vw_ccb_epsilon": "--epsilon 0.05"}

#: Every tuned family gets the same number of configurations (checked by the tuner),
#: searched on one seed that no reported run uses. ``neural_linear`` takes the
#: tuned ``linucb`` (α, λ) (its fine-tune makes a search of its own too costly);
#: river, most-popular and ``vw_dense_phi_squarecb`` run as configured.
TUNING_GRIDS: dict[str, list[Any]] = {
    "linucb": [{"alpha": a, "lam": lam} for a in (0.03, 0.1, 0.3) for lam in (1.0, 10.0)],
    "ts": [{"v": v, "lam": lam} for v in (0.01, 0.03, 0.1) for lam in (1.0, 10.0)],
    "hybrid_linucb": [{"alpha": a, "lam": lam} for a in (0.1, 0.3, 1.0) for lam in (1.0, 10.0)],
    "hybrid_ts": [{"v": v, "lam": lam} for v in (0.03, 0.1, 0.3) for lam in (1.0, 10.0)],
    "vw_squarecb": [f"-l {lr:g} --gamma_scale {g}" for lr in (0.1, 0.5, 2.0) for g in (10, 100)],
    "vw_epsilon": [f"-l {lr:g} --cb_type {c}" for lr in (0.1, 0.5, 2.0) for c in ("mtr", "dr")],
}

DEFAULT_PEERS = ("random", "popular", "vw_squarecb", "vw_epsilon", "vw_dense_phi_squarecb",
                 "river_eps", "river_ucb", "river_ts")
FAIRSTREAM = ("deployed", "deployed_published", "deployed_published_plain", "hybrid_linucb",
              "hybrid_ts", "linucb", "ts", "neural_linear", "deployed_fair",
              "hybrid_linucb_fair", "linucb_fair", "neural_linear_fair")


def is_peer(name: str) -> bool:
    return name.startswith(PEER_PREFIXES)


def split_fair(name: str, hyper: dict[str, Any]) -> tuple[str, float, str]:
    """``(policy, λ, controller target)`` of a roster name (see stream.evaluate.tradeoff)."""
    if name.endswith("_fair"):
        return (name.removesuffix("_fair"), float(hyper["fair_lam"]),
                hyper.get("fair_target", "merit"))
    for tag, target in (("_clam", "candidates"), ("_lam", "merit")):
        if tag in name:
            base, lam = name.rsplit(tag, 1)
            return base, float(lam), target
    return name, 0.0, "merit"


def make_agent(name: str, world: EvalWorld, seed: int,
               hyper: dict[str, dict[str, Any]] | None = None,
               vw_configs: dict[str, str] | None = None) -> Agent:
    """One agent by roster name, seeded with ``seed``."""
    hyper = HYPER if hyper is None else hyper
    vw_configs = VW_CONFIGS if vw_configs is None else vw_configs
    dim, fs = world.dim, world.fmap.feature_space
    if name == "random":
        return PolicyAgent(name, UniformRandom(dim, feature_space=fs, seed=seed))
    if name == "popular":
        return PolicyAgent(name, MostPopular(dim, feature_space=fs, seed=seed), needs_ids=True)
    if name in vw_configs:
        features = "dense_phi" if name.startswith("vw_dense_phi") else "sparse"
        return VWAgent(name, world, vw_configs[name], seed=seed, features=features)
    if name in VW_SLATE_CONFIGS:
        return VWSlateAgent(name, world, VW_SLATE_CONFIGS[name], seed=seed)
    if name.startswith("river_"):
        return RiverAgent(name, river_policy(name.removeprefix("river_"), seed))
    base, lam, target = split_fair(name, hyper)
    controller = ExposureController(lam, target=target) if lam > 0 else None
    if base == "linucb":
        h = hyper["linucb"]
        return PolicyAgent(name, LinUCB(dim, alpha=h["alpha"], lam=h["lam"], feature_space=fs,
                                        seed=seed), controller)
    if base == "ts":
        h = hyper["ts"]
        return PolicyAgent(name, LinearTS(dim, v=h["v"], lam=h["lam"],
                                          mc_samples=h["mc_samples"], feature_space=fs,
                                          seed=seed), controller)
    if base == "hybrid_linucb":
        h = hyper["hybrid_linucb"]
        return PolicyAgent(name, HybridLinUCB(dim, alpha=h["alpha"], lam=h["lam"],
                                              z=context_columns(dim), feature_space=fs,
                                              seed=seed), controller, needs_ids=True)
    if base == "hybrid_ts":
        h = hyper["hybrid_ts"]
        return PolicyAgent(name, HybridTS(dim, v=h["v"], lam=h["lam"], mc_samples=h["mc_samples"],
                                          z=context_columns(dim), feature_space=fs, seed=seed),
                           controller, needs_ids=True)
    if base in ("deployed", "deployed_published", "deployed_published_plain"):
        h = hyper["hybrid_linucb"]
        every = None if base == "deployed" else Settings().policy.publish_every_updates
        settings = Settings().replace(serve={"impression_discount": 0.0}) \
            if base.endswith("_plain") else None
        return DeployedAgent(name, world, {"algorithm": "hybrid_linucb", "alpha": h["alpha"],
                                           "lam": h["lam"], "item_context": "attributes"},
                             seed=seed, controller=controller, publish_every=every,
                             settings=settings)
    if base == "neural_linear":
        h = dict(hyper["neural_linear"])
        alpha, lam_r = h.pop("alpha"), h.pop("lam")

        def make_policy(fmap: FeatureMap) -> LinUCB:
            return LinUCB(fmap.dim, alpha=alpha, lam=lam_r, feature_space=fmap.feature_space,
                          seed=seed)

        return NeuralLinearAgent(name, world, make_policy, controller, seed=seed, **h)
    raise ValueError(f"unknown policy {name!r}")


def make_agents(names: Sequence[str], world: EvalWorld, seed: int,
                hyper: dict[str, dict[str, Any]] | None = None,
                vw_configs: dict[str, str] | None = None) -> list[Agent]:
    return [make_agent(n, world, seed, hyper, vw_configs) for n in names]
