"""The worker's part in online experiments: per-arm results, guardrails, and the stop.

:class:`ExperimentResultsRoom` follows ``<prefix>.experiments`` (the configuration in
force, as servers do; ``[experiment]`` in the settings is its version 1), counts every
closed impression of the running experiment into
:class:`~stream.experiments.results.ExperimentResults` (reward per arm and user
group, exposure per item group) and, every ``experiment.results_every_s``:

* sets the per-arm gauges (mean reward, the always-valid interval of the difference
  with control, disparity, share) and records a point of history;
* checks the guardrails. A breach is flagged (gauge 1, counted once, logged); with
  ``experiment.auto_stop`` the worker also *stops* the arm: it publishes the next
  version of the experiment, the arm marked stopped by ``guardrail``, on the topic.
  Servers follow the topic, so the arm's users go to control everywhere, and so does
  this worker when it reads the version back (a stop is published once per arm);
* publishes the results (``results:<name>``) for ``fairstream experiment report``.

Who stops an arm: the worker, because it alone sees rewards; the servers only follow
versions from the topic, so a stop reaches them like any admin change. The results
are part of the worker's checkpoint (:meth:`ExperimentResultsRoom.dump`): they move
with its offsets, so a restart goes on counting exactly where the checkpoint stands.

Several workers (the statistics exchange, ``docs/scaling.md``): each counts the
partitions it owns, and what it counted goes out with each partition's statistics
delta (:meth:`observed` returns the rows); every worker folds the others' rows
(:meth:`absorb`) exactly once, as it folds their statistics. So every worker holds the
group's results, a partition that moves keeps its past counts, and the results in a
checkpoint match its offsets. Only the publisher (``leads``) acts on them: it flags
breaches, stops arms and publishes the results record; every worker sets the gauges.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from kafka import KafkaProducer
from kafka.errors import KafkaError

from learners.features import attr_codes
from stream.core.catalog import Catalog
from stream.core.join import Pending
from stream.experiments import ExperimentBook, InvalidExperiment
from stream.experiments.config import experiment_from_settings
from stream.experiments.results import ExperimentResults
from stream.kafka.experiments import ExperimentFeed, kafka_publisher, results_key
from stream.metrics import Metrics
from stream.settings import Settings
from stream.worker.outcomes import group_labels

log = logging.getLogger(__name__)


class ExperimentResultsRoom:
    """Experiment configuration in, per-arm results, breaches and stops out."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.book = ExperimentBook()
        self.results: ExperimentResults | None = None
        self.feed = ExperimentFeed(settings, client="worker-experiments")
        self.producer: KafkaProducer | None = None
        self._next = 0.0
        self._flagged: set[tuple[str, str, str]] = set()
        self._stopping: set[tuple[str, str]] = set()
        #: whether this worker acts on the results (flags, stops, publishes them): the
        #: group's publisher when workers exchange statistics, else always
        self.leads: Callable[[], bool] = lambda: True
        configured = experiment_from_settings(settings.experiment)
        if configured is not None:
            self._adopt(configured)

    def __repr__(self) -> str:
        return f"ExperimentResultsRoom({self.book!r}, {self.results!r})"

    def open(self) -> ExperimentResultsRoom:
        self.feed.open()
        k = self.settings.kafka
        self.producer = KafkaProducer(bootstrap_servers=k.bootstrap, acks="all",
                                      client_id=f"{k.client_id}-experiments",
                                      max_request_size=4 << 20)
        for exp in self.feed.load():
            self._adopt(exp)
        return self

    def close(self) -> None:
        self.feed.close()
        if self.producer is not None:
            self.producer.flush(timeout=10)
            self.producer.close()
            self.producer = None

    def _adopt(self, exp) -> None:  # type: ignore[no-untyped-def]
        try:
            if not self.book.apply(exp):
                return
        except InvalidExperiment as exc:
            log.warning("ignoring experiment %s: %s", exp.name, exc)
            return
        current = self.book.current
        if current is None:
            return
        e = self.settings.experiment
        if self.results is None:
            self.results = ExperimentResults(
                current, alpha=e.error_rate, mixture_sd=e.mixture_sd,
                disparity_target=self.settings.fairness.disparity_target,
                min_impressions=e.min_impressions, min_users=e.min_users)
        elif self.results.follow(current):
            self._flagged.clear()
        self.metrics.declare_experiment(current.name, [a.name for a in current.arms])
        for arm, share in current.shares().items():
            self.metrics.experiment_share.labels(current.name, arm).set(share)
        self._next = 0.0  # the report shows a new version (a stop, a promotion) at once
        log.info("experiment %s v%d (%s): shares %s", current.name, current.version,
                 current.status, current.shares())

    # -- checkpoint part (stream.worker.checkpointer.Part) ---------------------------------

    name = "experiment"

    def dump(self) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        return None if self.results is None else self.results.state()

    def load(self, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        if self.results is not None and self.results.load_state(header, arrays):
            log.info("experiment %s: results resumed from the checkpoint (%s impressions)",
                     self.results.experiment.name,
                     {a: r.reward.n for a, r in self.results.arms.items()})
        elif header.get("experiment"):
            log.info("experiment %s in the checkpoint is not the one running: counted afresh",
                     header["experiment"])

    def forget(self, erased: Callable[[Iterable[str]], set[str]]) -> int:
        """Drop erased users from the results (:meth:`ExperimentResults.forget`); returns
        how many were held (the caller then checkpoints: the file stops holding them)."""
        if self.results is None:
            return 0
        gone = self.results.forget(erased)
        if gone:
            log.info("erasure: dropped %d user(s) from experiment %s's results", len(gone),
                     self.results.experiment.name)
        return len(gone)

    def poll(self) -> None:
        """Adopt configuration versions published since the last call."""
        if self.feed.consumer is not None:
            for exp in self.feed.poll():
                self._adopt(exp)

    def observed(self, closed: Iterable[Pending],
                 catalog: Catalog) -> list[tuple[int, list[Any]]]:
        """Count the closed impressions the running experiment served; returns what it
        counted as ``(events partition, row)``, a row being what :meth:`absorb` takes."""
        res = self.results
        if res is None:
            return []
        name = res.experiment.name
        index, groups = catalog.index, catalog.popularity
        m = self.metrics
        counted: dict[str, list[float]] = {}
        rows: list[tuple[int, list[Any]]] = []
        for p in closed:
            if p.experiment != name:
                continue
            item_groups = [groups[index[i]] if i in index else "unknown" for i in p.items]
            labels = group_labels(*attr_codes(p.user))
            if res.observe(p.arm, p.user_id, p.rewards, item_groups, labels):
                acc = counted.setdefault(p.arm, [0, 0.0])
                acc[0] += 1
                acc[1] += math.fsum(p.rewards) / len(p.rewards)
                rows.append((p.partition, [name, p.arm, p.user_id, list(p.rewards),
                                           item_groups, labels]))
        for arm, (n, reward) in counted.items():
            m.experiment_impressions.labels(name, arm).inc(n)
            m.experiment_reward.labels(name, arm).inc(reward)
        return rows

    def absorb(self, rows: list[list[Any]],
               erased: Callable[[Iterable[str]], set[str]] | None = None) -> int:
        """Count rows another worker counted (a folded statistics delta's) as
        :meth:`observed` counted them there; rows of another experiment, and of users
        ``erased`` names, are left out. Returns how many were counted. The per-arm
        counters stay the counting worker's: summed over workers they count each
        impression once."""
        res = self.results
        if res is None or not rows:
            return 0
        gone = erased({row[2] for row in rows}) if erased is not None else set()
        name, n = res.experiment.name, 0
        for exp, arm, user, rewards, item_groups, labels in rows:
            if exp == name and user not in gone:
                n += res.observe(arm, user, rewards, item_groups, labels)
        return n

    def due(self, now: float) -> bool:
        return self.results is not None and now >= self._next

    def tick(self, now: float | None = None) -> list[tuple[str, str]]:
        """Gauges, guardrails (and stops), history and the results record; returns the
        (arm, guardrail) pairs breached now."""
        now = time.monotonic() if now is None else now
        self._next = now + self.settings.experiment.results_every_s
        res = self.results
        if res is None:
            return []
        exp, m = res.experiment, self.metrics
        for row in res.table():
            arm = row["arm"]
            if row["impressions"]:
                m.experiment_reward_mean.labels(exp.name, arm).set(row["reward"])
            if not math.isnan(row["disparity"]):
                m.experiment_disparity.labels(exp.name, arm).set(row["disparity"])
            if not row["control"] and math.isfinite(row["lower"]):
                for bound in ("diff", "lower", "upper"):
                    m.experiment_reward_diff.labels(
                        exp.name, arm, "estimate" if bound == "diff" else bound).set(row[bound])
        breaches = res.breaches()
        now_breached = {(b.arm, b.guardrail) for b in breaches}
        for arm in exp.arms:
            for guardrail in ("reward", "disparity"):
                m.experiment_breached.labels(exp.name, arm.name, guardrail).set(
                    1 if (arm.name, guardrail) in now_breached else 0)
        res.record(time.time())
        if not self.leads():  # the publisher flags, stops and publishes (module doc)
            return sorted(now_breached)
        for b in breaches:
            key = (exp.name, b.arm, b.guardrail)
            if key not in self._flagged:
                self._flagged.add(key)
                m.experiment_breaches.labels(exp.name, b.arm, b.guardrail).inc()
                log.warning("experiment %s arm %s breaches the %s guardrail: %s",
                            exp.name, b.arm, b.guardrail, b.detail)
            if exp.auto_stop and (exp.name, b.arm) not in self._stopping:
                self._stop(b.arm, f"guardrail {b.guardrail}: {b.detail}")
        self._publish_results()
        return sorted(now_breached)

    def _stop(self, arm: str, reason: str) -> None:
        exp = self.book.current
        try:
            stopped = self.book.stop(arm, reason, by="guardrail")
        except InvalidExperiment as exc:
            log.warning("could not stop %s/%s: %s", exp.name if exp else "-", arm, exc)
            return
        if self.producer is None:
            self._adopt(stopped)  # no Kafka (a test of the room alone)
        else:
            try:
                kafka_publisher(self.producer, self.settings.topics.experiments)(stopped)
            except KafkaError as exc:  # not stopped yet: the next tick tries again
                log.warning("could not publish the stop of %s/%s: %s", stopped.name, arm, exc)
                return
        self._stopping.add((stopped.name, arm))
        self.metrics.experiment_stops.labels(stopped.name, arm).inc()
        log.warning("experiment %s: arm %s stopped by guardrail (v%d): %s", stopped.name,
                    arm, stopped.version, reason)

    def _publish_results(self) -> None:
        if self.producer is None or self.results is None:
            return
        self.producer.send(self.settings.topics.experiments,
                           key=results_key(self.results.experiment.name),
                           value=json.dumps(self.results.to_dict(),
                                            allow_nan=True).encode())
