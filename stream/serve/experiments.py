"""The server's side of online experiments: the configuration in force, its changes, and
the follower of ``<prefix>.experiments``.

Changes are Kafka-native: whoever changes an experiment (an admin call to any server,
or a worker whose guardrail stops an arm) publishes the new version, keyed
``config:<name>``, on the compacted experiments topic, and every server and worker
adopts what it reads there, newest version first-come (:class:`ExperimentBook`). A
server answering an admin call waits until its own follower has read the change back
(read-your-writes), so two servers changing one experiment at once cannot end up
serving different versions: the loser is told ``experiment_conflict`` (409).

``[experiment]`` in the settings is version 1 of its experiment on every process
that reads those settings (nothing is published for it); the topic's later versions
win. Every adopted version is logged and counted.

>>> from stream.experiments import Arm, Experiment
>>> from stream.serve.recommender import Recommender
>>> control = ExperimentControl(Recommender())
>>> exp = control.create(Experiment(name="e", arms=[Arm(name="control", share=0.5),
...                                                 Arm(name="b", share=0.5, alpha=0.1)]))
>>> exp.version, control.stop("b", "by hand").shares()
(1, {'control': 1.0, 'b': 0.0})
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from kafka import KafkaConsumer, TopicPartition

from stream.experiments import Experiment, ExperimentBook, InvalidExperiment
from stream.experiments.config import decode_experiment
from stream.kafka.experiments import CONFIG_PREFIX
from stream.metrics import ServeMetrics
from stream.serve.follower import _POLL_MS, _Follower
from stream.serve.recommender import Recommender
from stream.settings import Settings

log = logging.getLogger(__name__)

class ExperimentControl:
    """The book of experiments this server follows, applied to its recommender.

    ``publish`` (an experiment → None, raising when Kafka did not acknowledge it) makes
    changes go through the topic; without it (tests, no Kafka) they apply at once.
    """

    def __init__(self, recommender: Recommender, metrics: ServeMetrics | None = None,
                 publish: Callable[[Experiment], None] | None = None,
                 read_back_s: float = 10.0) -> None:
        self.book = ExperimentBook()
        self.recommender = recommender
        self.metrics = metrics
        self.publish = publish
        self.read_back_s = read_back_s
        self._changed = threading.Condition()
        self._write = threading.Lock()  # one admin change at a time per server

    def __repr__(self) -> str:
        return f"ExperimentControl({self.book!r})"

    @property
    def current(self) -> Experiment | None:
        return self.book.current

    def adopt(self, exp: Experiment) -> bool:
        """Follow ``exp`` (from settings, the topic, or a change without Kafka)."""
        with self._changed:
            if not self.book.apply(exp):
                return False
            current = self.book.current
            self.recommender.set_experiment(current)
            self._changed.notify_all()
        log.info("experiment %s v%d (%s, by %s%s): shares %s", exp.name, exp.version,
                 exp.status, exp.changed_by, f": {exp.reason}" if exp.reason else "",
                 exp.shares())
        if self.metrics is not None and current is exp:
            self.metrics.experiment_version.set(exp.version)
            self.metrics.experiment_changes.labels(by=_by(exp.changed_by)).inc()
            self.metrics.declare_experiment(exp)
        return True

    # -- changes (admin) -------------------------------------------------------------------------

    def create(self, exp: Experiment) -> Experiment:
        return self._change(lambda book: book.create(exp))

    def set_shares(self, shares: dict[str, float], reason: str = "") -> Experiment:
        return self._change(lambda book: book.set_shares(shares, reason=reason))

    def stop(self, arm: str, reason: str = "") -> Experiment:
        return self._change(lambda book: book.stop(arm, reason or "stopped by admin"))

    def promote(self, arm: str, reason: str = "") -> Experiment:
        return self._change(lambda book: book.promote(arm, reason=reason))

    def rollback(self, reason: str = "") -> Experiment:
        return self._change(lambda book: book.rollback(reason=reason))

    def _change(self, make: Callable[[ExperimentBook], Experiment]) -> Experiment:
        """Make a change against the book in force (refusals leave everything as it was),
        publish it, and return it once this server follows it."""
        with self._write:
            exp = make(self.book)
            if self.publish is None:
                self.adopt(exp)
                return exp
            self.publish(exp)
            deadline = time.monotonic() + self.read_back_s
            with self._changed:
                while self.book.versions.get(exp.name, 0) < exp.version:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(f"experiment {exp.name} v{exp.version} published "
                                           f"but not read back within {self.read_back_s} s")
                    self._changed.wait(left)
                current = self.book.current
            if current is None or current.name != exp.name or current.ts != exp.ts:
                raise InvalidExperiment("experiment_conflict",
                                        f"another change of {exp.name!r} v{exp.version} came "
                                        f"first; in force: {current!r}")
            return current


def _by(changed_by: str) -> str:
    """A bounded label for who made a change."""
    return changed_by if changed_by in ("settings", "admin", "guardrail") else "other"


class ExperimentFollower(_Follower):
    """Follows ``<prefix>.experiments`` from its start: every ``config:<name>`` record is
    adopted by :class:`ExperimentControl`; results records are the report's."""

    name = "experiments"

    def __init__(self, settings: Settings, control: ExperimentControl,
                 metrics: ServeMetrics) -> None:
        super().__init__(settings, control.recommender, metrics)
        self.control = control
        self._tp = TopicPartition(settings.topics.experiments, 0)

    def _open(self) -> KafkaConsumer:
        return self._from_start("experiments", self._tp)

    def _step(self) -> None:
        batch = self.consumer.poll(timeout_ms=_POLL_MS)
        for records in batch.values():
            for record in records:
                self.handle(record.key, record.value)
        if not self.caught_up.is_set() and self._at_end([self._tp]):
            self.caught_up.set()

    def handle(self, key: bytes | None, value: bytes | None) -> bool:
        if key is None or value is None or not key.startswith(CONFIG_PREFIX):
            return False
        try:
            return self.control.adopt(decode_experiment(value))
        except InvalidExperiment as exc:
            log.warning("ignoring experiment record %r: %s", key, exc)
            return False
