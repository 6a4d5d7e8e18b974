"""Per-arm results of the running experiment, its guardrails, and its history.

Per arm, from closed impressions (each a unit: its slate's mean reward):

* reward: the mean over impressions with its users-as-clusters variance
  (:class:`~stream.experiments.sequential.ClusteredMoments`), and per user group
  (``gender=F``, ``age=25-34``, ...);
* exposure per item group (position weights ``1/log2(1+j)``) and merit (reward) per
  item group, hence the arm's exposure/merit disparity ``½ Σ_g |e_g − m_g|``
  (:mod:`bandits.fairness`);
* against control: the always-valid interval of ``mean_arm − mean_control``
  (:func:`~stream.experiments.sequential.compare`).

Guardrails, checked whenever the worker publishes: an arm breaches ``reward`` when
its interval lies wholly below 0 (worse than control beyond its interval), and
``disparity`` when, after ``min_impressions``, its disparity exceeds the target (the
control's own disparity is reported, never a breach: it is what runs today).

>>> from stream.experiments.config import Arm, Experiment
>>> exp = Experiment(name="e", arms=[Arm(name="control", share=0.5), Arm(name="b", share=0.5)])
>>> res = ExperimentResults(exp, mixture_sd=0.05)
>>> for i in range(400):
...     _ = res.observe("control", f"u{i}", [1.0 if i % 2 else 0.0], ["head"], ("gender=F",))
...     _ = res.observe("b", f"v{i}", [0.0], ["tail"], ("gender=F",))
>>> [(b.arm, b.guardrail) for b in res.breaches()]
[('b', 'reward')]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bandits import position_weights
from stream.experiments.config import Experiment
from stream.experiments.sequential import ClusteredMoments, Comparison, Moments, compare

#: Points of history kept (one per publish): the report's time axis.
MAX_HISTORY = 300


@dataclass(frozen=True)
class Breach:
    """An arm over a guardrail: ``guardrail`` is ``reward`` or ``disparity``."""

    arm: str
    guardrail: str
    detail: str


class ArmResults:
    """Everything one arm has accumulated."""

    def __init__(self) -> None:
        self.reward = ClusteredMoments()
        self.by_user_group: dict[str, Moments] = {}
        self.exposure: dict[str, float] = {}
        self.merit: dict[str, float] = {}
        self.shown = 0

    def observe(self, user: str, rewards: Sequence[float], item_groups: Sequence[str],
                user_groups: Iterable[str]) -> None:
        unit = math.fsum(rewards) / len(rewards)
        self.reward.add(user, unit)
        self.shown += len(rewards)
        for label in user_groups:
            m = self.by_user_group.get(label)
            if m is None:
                m = self.by_user_group[label] = Moments()
            m.add(unit)
        for w, g, r in zip(position_weights(len(rewards)).tolist(), item_groups, rewards,
                           strict=True):
            self.exposure[g] = self.exposure.get(g, 0.0) + w
            self.merit[g] = self.merit.get(g, 0.0) + r

    def disparity(self) -> float:
        """``½ Σ_g |e_g − m_g|`` (nan before any reward)."""
        total_e, total_m = math.fsum(self.exposure.values()), math.fsum(self.merit.values())
        if total_e <= 0 or total_m <= 0:
            return math.nan
        groups = set(self.exposure) | set(self.merit)
        return 0.5 * math.fsum(abs(self.exposure.get(g, 0.0) / total_e
                                   - self.merit.get(g, 0.0) / total_m) for g in groups)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able sums (the per-user ones stay in memory)."""
        return {"reward": self.reward.to_list(), "shown": self.shown,
                "by_user_group": {k: _m(v) for k, v in sorted(self.by_user_group.items())},
                "exposure": dict(sorted(self.exposure.items())),
                "merit": dict(sorted(self.merit.items()))}


    def state(self) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        """Everything, to restore exactly (a checkpoint's header part, the users and their
        per-user sums)."""
        sums, users, rows = self.reward.state()
        return {"reward": sums, "shown": self.shown,
                "by_user_group": {k: _m(v) for k, v in self.by_user_group.items()},
                "exposure": dict(self.exposure), "merit": dict(self.merit)}, users, rows

    @classmethod
    def from_state(cls, head: dict[str, Any], users: np.ndarray,
                   rows: np.ndarray) -> ArmResults:
        arm = cls()
        arm.reward = ClusteredMoments.from_state(head["reward"], users, rows)
        arm.shown = int(head["shown"])
        arm.by_user_group = {k: Moments(int(n), float(t), float(sq))
                             for k, (n, t, sq) in head["by_user_group"].items()}
        arm.exposure = {k: float(v) for k, v in head["exposure"].items()}
        arm.merit = {k: float(v) for k, v in head["merit"].items()}
        return arm


def _m(m: Moments) -> list[float]:
    return [m.n, m.total, m.total_sq]


class ExperimentResults:
    """The running experiment's per-arm results, comparisons, breaches and history.

    ``alpha``: the intervals' level; ``mixture_sd``: τ of the normal mixture;
    ``disparity_target``: the fairness guardrail (``fairness.disparity_target``);
    ``min_impressions``: units per arm before the disparity guardrail can fire;
    ``min_users``: users per arm before the interval is finite (the plug-in variance
    needs enough clusters).
    """

    def __init__(self, experiment: Experiment, alpha: float = 0.05, mixture_sd: float = 0.05,
                 disparity_target: float = math.inf, min_impressions: int = 100,
                 min_users: int = 2) -> None:
        self.experiment = experiment
        self.alpha = float(alpha)
        self.tau2 = float(mixture_sd) ** 2
        self.disparity_target = float(disparity_target)
        self.min_impressions = int(min_impressions)
        self.min_users = int(min_users)
        self.arms: dict[str, ArmResults] = {a.name: ArmResults() for a in experiment.arms}
        self.history: list[dict[str, Any]] = []
        self._p_min: dict[str, float] = {}

    def __repr__(self) -> str:
        return (f"ExperimentResults({self.experiment.name!r}, "
                f"{ {a: r.reward.n for a, r in self.arms.items()} })")

    def follow(self, experiment: Experiment) -> bool:
        """A newer version of the same experiment keeps the results; another experiment
        starts afresh. True when the results were reset."""
        if experiment.name == self.experiment.name:
            self.experiment = experiment
            for arm in experiment.arms:
                self.arms.setdefault(arm.name, ArmResults())
            return False
        self.__init__(experiment, self.alpha, math.sqrt(self.tau2),  # type: ignore[misc]
                      self.disparity_target, self.min_impressions, self.min_users)
        return True

    def observe(self, arm: str, user: str, rewards: Sequence[float],
                item_groups: Sequence[str], user_groups: Iterable[str]) -> bool:
        """Count one closed impression of ``arm`` shown to ``user``; False (ignored) for
        an unknown arm."""
        results = self.arms.get(arm)
        if results is None or not rewards:
            return False
        results.observe(user, rewards, item_groups, user_groups)
        return True

    def comparison(self, arm: str) -> Comparison:
        c = compare(self.arms[arm].reward, self.arms[self.experiment.control].reward,
                    self.tau2, self.alpha, self.min_users)
        p = min(self._p_min.get(arm, 1.0), c.p_value)
        self._p_min[arm] = p  # the always-valid p-value is the running minimum
        return Comparison(c.diff, c.lower, c.upper, p, c.n_arm, c.n_control)

    def breaches(self) -> list[Breach]:
        """Arms over a guardrail now (stopped arms and control excluded)."""
        out = []
        exp = self.experiment
        if exp.status != "running":
            return out
        for arm in exp.arms:
            if arm.name == exp.control or arm.stopped:
                continue
            res = self.arms[arm.name]
            c = self.comparison(arm.name)
            if c.upper < 0:
                out.append(Breach(arm.name, "reward",
                                  f"reward {c.diff:+.4f} vs control, interval "
                                  f"[{c.lower:+.4f}, {c.upper:+.4f}] below 0 after "
                                  f"{c.n_arm} impressions"))
                continue
            d = res.disparity()
            if res.reward.n >= self.min_impressions and d > self.disparity_target:
                out.append(Breach(arm.name, "disparity",
                                  f"exposure disparity {d:.4f} > target "
                                  f"{self.disparity_target:g} after {res.reward.n} "
                                  f"impressions"))
        return out

    def table(self) -> list[dict[str, Any]]:
        """One row per arm: share, impressions, mean reward, the interval of the
        difference with control, disparity, status."""
        exp = self.experiment
        shares = exp.shares()
        rows = []
        for arm in exp.arms:
            res = self.arms[arm.name]
            control = arm.name == exp.control
            c = None if control else self.comparison(arm.name)
            rows.append({
                "arm": arm.name, "control": control, "share": shares[arm.name],
                "impressions": res.reward.n, "shown": res.shown,
                "reward": res.reward.mean,
                "diff": math.nan if c is None else c.diff,
                "lower": math.nan if c is None else c.lower,
                "upper": math.nan if c is None else c.upper,
                "p_value": math.nan if c is None else c.p_value,
                "disparity": res.disparity(),
                "status": (arm.stopped and f"stopped: {arm.stopped}") or
                ("winner" if exp.winner == arm.name else "running"
                 if exp.status == "running" else exp.status),
            })
        return rows

    def record(self, ts: float) -> dict[str, Any]:
        """Append the current table to the history (one point per call, bounded)."""
        point = {"ts": ts, "arms": {r["arm"]: {k: r[k] for k in (
            "impressions", "reward", "diff", "lower", "upper", "disparity", "share")}
            for r in self.table()}}
        self.history.append(point)
        if len(self.history) > MAX_HISTORY:  # thin the older half: the whole run stays
            self.history = self.history[:MAX_HISTORY // 2:2] + self.history[MAX_HISTORY // 2:]
        return point

    def forget(self, erased: Callable[[Iterable[str]], set[str]]) -> list[str]:
        """Drop the users ``erased`` picks out of those held (an erasure): their per-user
        sums, where the pseudonym is, and their part of each arm's reward. Per-group and
        per-item-group sums carry no identifier and keep their share. Returns the users
        dropped."""
        gone: set[str] = set()
        for res in self.arms.values():
            users = erased(res.reward.users_held())
            res.reward.forget(users)
            gone |= users
        return sorted(gone)

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """What a worker checkpoint keeps, so that a restart goes on counting where the
        checkpoint's offsets stand instead of afresh: per arm everything
        :class:`ArmResults` sums (its users' sums as arrays), the running minimum
        p-values and the history. The per-user sums make it grow with the experiment's
        users (two floats and an id each)."""
        arms, arrays = {}, {}
        for i, (name, res) in enumerate(self.arms.items()):
            arms[name], arrays[f"{i}.users"], arrays[f"{i}.sums"] = res.state()
        return {"experiment": self.experiment.name, "version": self.experiment.version,
                "arms": arms, "p_min": dict(self._p_min), "history": self.history}, arrays

    def load_state(self, head: dict[str, Any], arrays: dict[str, np.ndarray]) -> bool:
        """Take what :meth:`state` saved if it is of this experiment (any version: a
        newer version keeps the results, as :meth:`follow` does); False, with nothing
        changed, for another experiment."""
        if head.get("experiment") != self.experiment.name:
            return False
        arms = {name: ArmResults.from_state(h, arrays[f"{i}.users"], arrays[f"{i}.sums"])
                for i, (name, h) in enumerate(head["arms"].items())}
        for arm in self.experiment.arms:
            arms.setdefault(arm.name, ArmResults())
        self.arms = arms
        self._p_min = {k: float(v) for k, v in head["p_min"].items()}
        self.history = list(head["history"])
        return True

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: the experiment, the level, per-arm sums, the table and history."""
        return {"experiment": self.experiment.name, "version": self.experiment.version,
                "alpha": self.alpha, "mixture_sd": math.sqrt(self.tau2),
                "disparity_target": self.disparity_target,
                "arms": {a: r.to_dict() for a, r in self.arms.items()},
                "table": self.table(), "history": self.history}

