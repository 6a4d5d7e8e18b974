"""An online experiment as the server applies it: who gets which arm, and each arm's policy.

A :class:`Split` is immutable apart from its caches and is swapped as a unit by
:meth:`stream.serve.recommender.Recommender.set_experiment`. Per request it costs
one keyed hash (:class:`stream.experiments.assign.Router`) and one dictionary look-up:

* an arm that changes nothing serves the served bundle as is;
* an arm with ``alpha`` or ``exploration`` serves the served policy's statistics with
  that hyper-parameter changed (:func:`bandits.with_exploration`: a hybrid policy
  switches its rule; a linear one is served by LinUCB or linear Thompson sampling over
  the same ridge model, TS at the policy's own ``v``, else ``bandit.v``), so its
  propensities (those ``select`` returns) are its own;
* an arm pinned to a ``version`` serves that kept verified bundle (the policy
  follower keeps ``serve.keep_versions``) with its own feature map and adapted
  catalog; a version no longer kept falls back to the served bundle, logged once;
  the impression's ``policy_version`` always names the bundle that chose it;
* every arm has its own exposure controller (its ``exposure_strength``, else the
  server's), so arms never push each other's exposure.

>>> from stream.experiments import Arm, Experiment
>>> split = Split(Experiment(name="e", arms=[Arm(name="control", share=1.0)]), None)
>>> split.router.arm("u1")
'control'
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable

import numpy as np

from bandits import ExposureController, InvalidInput, with_exploration
from bandits.base import Policy
from stream.core.bundle import PolicyBundle
from stream.experiments import Arm, Experiment, Router

log = logging.getLogger(__name__)

_MAX_CACHED = 64


class Split:
    """Routing and per-arm scoring of one experiment version."""

    def __init__(self, experiment: Experiment, exposure: ExposureController | None,
                 thompson_v: float = 1.0) -> None:
        self.experiment = experiment
        self.thompson_v = float(thompson_v)
        self.router = Router(experiment)
        self.arms: dict[str, Arm] = {a.name: a for a in experiment.arms}
        lam = exposure.lam if exposure is not None else 0.0
        target = exposure.target if exposure is not None else "candidates"
        self.exposure = {a.name: ExposureController(
            lam=lam if a.exposure_strength is None else a.exposure_strength, target=target)
            for a in experiment.arms}
        self._cache: dict[tuple[str, int, str], tuple[PolicyBundle, Policy, np.ndarray]] = {}
        self._lock = threading.Lock()
        self._missing: set[object] = set()  # warned about once: unkept versions, knobs

    def __repr__(self) -> str:
        e = self.experiment
        return f"Split({e.name!r} v{e.version}, {e.shares()})"

    def resolve(self, arm: str, served: PolicyBundle, table: np.ndarray, emb: np.ndarray,
                kept: Callable[[int], PolicyBundle | None]
                ) -> tuple[PolicyBundle, Policy, np.ndarray, ExposureController]:
        """The bundle, policy, adapted catalog and exposure controller ``arm`` serves with."""
        key = (arm, served.version, served.feature_space)
        hit = self._cache.get(key)
        if hit is None or len(hit[2]) != len(table):
            hit = self._build(self.arms[arm], served, table, emb, kept)
            with self._lock:
                if len(self._cache) >= _MAX_CACHED:
                    self._cache.clear()
                self._cache[key] = hit
        return hit[0], hit[1], hit[2], self.exposure[arm]

    def _build(self, arm: Arm, served: PolicyBundle, table: np.ndarray, emb: np.ndarray,
               kept: Callable[[int], PolicyBundle | None]
               ) -> tuple[PolicyBundle, Policy, np.ndarray]:
        bundle = served
        if arm.version is not None and arm.version != served.version:
            pinned = kept(arm.version)
            if pinned is None:
                if arm.version not in self._missing:
                    self._missing.add(arm.version)
                    log.warning("experiment %s arm %s: version %d is not kept; serving v%d",
                                self.experiment.name, arm.name, arm.version, served.version)
            else:
                bundle = pinned
                if pinned.feature_space != served.feature_space:
                    table = pinned.fmap.adapt(emb) if len(emb) else \
                        np.zeros((0, pinned.fmap.k_item))
        policy = bundle.policy
        if arm.exploration is not None:
            try:
                policy = with_exploration(policy, arm.exploration, alpha=arm.alpha,
                                          v=getattr(policy, "v", self.thompson_v))
            except InvalidInput as exc:
                self._ignored(arm, policy, "exploration", exc)
            if arm.alpha is not None and not hasattr(policy, "alpha"):
                self._ignored(arm, policy, "alpha", "Thompson sampling has no alpha")
        if arm.alpha is not None and policy is bundle.policy:
            if hasattr(policy, "alpha"):
                policy = copy.copy(policy)
                policy.alpha = float(arm.alpha)
            else:
                self._ignored(arm, policy, "alpha", f"{policy.algorithm} has no alpha")
        return bundle, policy, table

    def _ignored(self, arm: Arm, policy: Policy, knob: str, why: object) -> None:
        """A knob the served policy cannot take: the arm serves without it (warned once)."""
        if (arm.name, knob) not in self._missing:
            self._missing.add((arm.name, knob))
            log.warning("experiment %s arm %s: %s ignored on the served %s policy (%s)",
                        self.experiment.name, arm.name, knob, policy.algorithm, why)
