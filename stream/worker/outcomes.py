"""How well the worker's policies do: reward and CTR of closed impressions by who chose the
slate, and feedback that joined nothing.

An impression's ``policy_version`` says who chose it: a server writes the version
of the policy it served; a replay of logged data writes ``"logged"``
(:data:`REPLAY_VERSION`). So the reward of served traffic is never mixed with
that of a replay, per user group (``fairstream_rewards_sum_total{user_group, source}``)
as well as overall, and each policy version gets its own reward and CTR:

    reward rate = policy_reward_sum / policy_shown,  CTR = policy_clicked / policy_shown

Versions are a growing set, so only the last :data:`MAX_VERSIONS` served ones keep
series (older ones are removed from the registry): the label set stays bounded.
A version's series start at 0 when the worker publishes it (:meth:`Outcomes.declare`),
before any impression it chose can close, so ``rate()`` sees its first increase;
the replay's start at 0 with the worker.
The totals of the current progress window are kept for the worker's log line.

>>> from stream.core.join import Pending
>>> from stream.metrics import Metrics
>>> m = Metrics()
>>> o = Outcomes(m)
>>> o.count([Pending("r1", "u", 0.0, ("a", "b"), (1.0, 1.0), {}, [1.0, 0.0], "7"),
...          Pending("r2", "u", 0.0, ("a",), (1.0,), {}, [0.0], "logged")])
>>> m.registry.get_sample_value("fairstream_policy_shown_total",
...                             {"source": "served", "policy_version": "7"})
2.0
>>> o.take_window()
{'served': (2, 1.0, 1), 'replay': (1, 0.0, 0)}
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Iterable, Mapping

from learners.features import AGE_BUCKETS, GENDERS, UNKNOWN, attr_codes
from stream.core.join import Pending
from stream.metrics import Metrics

#: What a replay of logged data writes as an impression's policy_version.
REPLAY_VERSION = "logged"
#: Served policy versions that keep series of their own.
MAX_VERSIONS = 8


@functools.cache
def group_labels(gender: int, age: int) -> tuple[str, str]:
    """The user-group labels of attribute codes, as the fairness tracker names them."""
    return (f"gender={GENDERS[gender] if gender >= 0 else UNKNOWN}",
            f"age={AGE_BUCKETS[age] if age >= 0 else UNKNOWN}")


def source_of(policy_version: str) -> str:
    """``"replay"`` for logged traffic, ``"unknown"`` for an impression from before
    versions were kept (an older checkpoint), else ``"served"``."""
    if policy_version == REPLAY_VERSION:
        return "replay"
    return "served" if policy_version else "unknown"


class Outcomes:
    """Counts closed impressions into the per-source, per-version families of ``metrics``."""

    def __init__(self, metrics: Metrics, max_versions: int = MAX_VERSIONS) -> None:
        self.metrics = metrics
        self.max_versions = max_versions
        self._versions: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._window: dict[str, list[float]] = {}
        self._unjoined: dict[str, int] = {}
        self.declare(REPLAY_VERSION)

    def declare(self, policy_version: int | str) -> None:
        """Create a version's series at 0 (the worker calls it as it publishes one)."""
        version = str(policy_version)
        key = (source_of(version), version)
        self._keep(key)
        for family in (self.metrics.policy_shown, self.metrics.policy_reward,
                       self.metrics.policy_clicked):
            family.labels(*key)

    def count(self, closed: Iterable[Pending]) -> None:
        sums: dict[tuple[str, str], list[float]] = {}
        by_group: dict[tuple[str, str], list[float]] = {}
        for p in closed:
            source = source_of(p.policy_version)
            key = (source, p.policy_version)
            acc = sums.get(key)
            if acc is None:
                acc = sums[key] = [0, 0.0, 0]
            shown, reward = len(p.rewards), sum(p.rewards)
            acc[0] += shown
            acc[1] += reward
            acc[2] += sum(1 for r in p.rewards if r > 0)
            for label in group_labels(*attr_codes(p.user)):
                g = by_group.get((label, source))
                if g is None:
                    g = by_group[(label, source)] = [0, 0.0]
                g[0] += shown
                g[1] += reward
        m = self.metrics
        for (label, source), (shown, reward) in by_group.items():
            m.impressions_joined.labels(user_group=label, source=source).inc(shown)
            m.reward_sum.labels(user_group=label, source=source).inc(reward)
        for key, (shown, reward, clicked) in sums.items():
            self._keep(key)
            labels = {"source": key[0], "policy_version": key[1]}
            m.policy_shown.labels(**labels).inc(shown)
            m.policy_reward.labels(**labels).inc(reward)
            m.policy_clicked.labels(**labels).inc(clicked)
            window = self._window.setdefault(key[0], [0, 0.0, 0])
            window[0] += shown
            window[1] += reward
            window[2] += clicked

    def _keep(self, key: tuple[str, str]) -> None:
        """Bound the served versions with series: drop the one seen longest ago."""
        if key in self._versions:
            self._versions.move_to_end(key)
            return
        self._versions[key] = None
        served = [k for k in self._versions if k[0] == "served"]
        if len(served) > self.max_versions:
            old = served[0]
            del self._versions[old]
            for family in (self.metrics.policy_shown, self.metrics.policy_reward,
                           self.metrics.policy_clicked):
                family.remove(*old)

    def sync_unjoined(self, counts: Mapping[str, int]) -> None:
        """Add what the join counted since the last call (its counts only grow)."""
        for reason, n in counts.items():
            delta = n - self._unjoined.get(reason, 0)
            if delta > 0:
                self.metrics.feedback_unjoined.labels(reason=reason).inc(delta)
            self._unjoined[reason] = n

    def take_window(self) -> dict[str, tuple[int, float, int]]:
        """Per source, (shown, reward sum, clicked) since the last call; then start anew."""
        window = {s: (int(v[0]), float(v[1]), int(v[2])) for s, v in self._window.items()}
        self._window.clear()
        return window
