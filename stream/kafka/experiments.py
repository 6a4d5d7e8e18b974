"""The experiments topic: configuration versions and results, published and followed.

``<prefix>.experiments`` is compacted, one partition. Key ``config:<name>``: the
latest :class:`~stream.experiments.config.Experiment` version of that experiment (JSON);
key ``results:<name>``: the worker's latest per-arm results with their history (JSON,
:meth:`~stream.experiments.results.ExperimentResults.to_dict`). Servers, workers and
``fairstream experiment report`` read it from the beginning with no consumer group.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from stream.experiments import Experiment, ExperimentBook, InvalidExperiment
from stream.experiments.config import decode_experiment, encode_experiment
from stream.kafka.follow import DecodedFeed
from stream.settings import Settings

log = logging.getLogger(__name__)

CONFIG_PREFIX = b"config:"
RESULTS_PREFIX = b"results:"


def config_key(name: str) -> bytes:
    return CONFIG_PREFIX + name.encode()


def results_key(name: str) -> bytes:
    return RESULTS_PREFIX + name.encode()


def kafka_publisher(producer: Any, topic: str, timeout_s: float = 10.0
                    ) -> Callable[[Experiment], None]:
    """Publish an experiment version and wait for Kafka's acknowledgement."""

    def publish(exp: Experiment) -> None:
        producer.send(topic, key=config_key(exp.name), value=encode_experiment(exp)).get(
            timeout=timeout_s)

    return publish


class ExperimentFeed(DecodedFeed):
    """Follows the experiments topic: ``poll`` returns new configuration versions (decoded,
    validated; malformed ones are logged and skipped) and stores results records."""

    def __init__(self, settings: Settings, client: str = "experiments") -> None:
        super().__init__(settings, settings.topics.experiments, client)
        self.results: dict[str, dict[str, Any]] = {}

    def poll(self, timeout_ms: int = 0) -> list[Experiment]:
        out = []
        for records in self.consumer.poll(timeout_ms=timeout_ms).values():
            for record in records:
                key, value = record.key or b"", record.value
                if value is None:
                    continue
                if key.startswith(CONFIG_PREFIX):
                    try:
                        out.append(decode_experiment(value))
                    except InvalidExperiment as exc:
                        log.warning("skipping experiment record at offset %d: %s",
                                    record.offset, exc)
                elif key.startswith(RESULTS_PREFIX):
                    try:
                        self.results[key[len(RESULTS_PREFIX):].decode()] = json.loads(value)
                    except ValueError:
                        log.warning("skipping results record at offset %d", record.offset)
        return out




def read_experiments(settings: Settings, timeout_s: float = 60.0
                     ) -> tuple[ExperimentBook, dict[str, dict[str, Any]]]:
    """The book of every experiment on the topic, and the latest results of each."""
    feed = ExperimentFeed(settings, client="experiment-report").open()
    try:
        book = ExperimentBook()
        for exp in feed.load(timeout_s):
            book.apply(exp)
        return book, feed.results
    finally:
        feed.close()
