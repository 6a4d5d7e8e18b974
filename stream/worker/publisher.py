"""The publisher: the current policy as a signed bundle on ``fairstream.policies``, and the
fairness window's figures on ``fairstream.fairness``.

Every bundle carries a new version number, one more than the last, and servers swap
only to a newer one. The number is recorded before the bundle is sent (the
:class:`~stream.worker.checkpointer.Checkpointer` owns that record), so a worker that
crashes right after publishing never reuses it. Publishing is due after
``policy.publish_every_updates`` rows learned or ``policy.publish_every_s`` seconds
with something new.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from kafka import KafkaProducer

from stream.core.bundle import dump_bundle
from stream.core.state import LearningState
from stream.metrics import Metrics
from stream.settings import Settings

log = logging.getLogger(__name__)


class Publisher:
    """Publishes a state's policy and fairness report; ``record_version`` is called with
    each new version number before its bundle is sent."""

    def __init__(self, settings: Settings, metrics: Metrics,
                 record_version: Callable[[int], None]) -> None:
        self.settings = settings
        self.metrics = metrics
        self.record_version = record_version
        k = settings.kafka
        self.producer = KafkaProducer(bootstrap_servers=k.bootstrap, acks="all", linger_ms=20,
                                      max_request_size=settings.policy.max_bundle_bytes,
                                      client_id=f"{k.client_id}-policies")
        self._last = time.monotonic()
        self._since = 0  # rows learned since the last publish

    def learned(self, rows: int) -> None:
        self._since += rows

    def due(self, now: float) -> bool:
        p = self.settings.policy
        return bool(self._since) and (self._since >= p.publish_every_updates
                                      or now - self._last >= p.publish_every_s)

    def withhold(self) -> None:
        """A publish that was due and is not made (a partial model): due again only after
        as many rows or seconds again."""
        self._since, self._last = 0, time.monotonic()

    @property
    def pending(self) -> bool:
        """Whether rows have been learned since the last publish."""
        return bool(self._since)

    def publish(self, state: LearningState, lock: threading.Lock) -> int:
        """Publish ``state``'s policy under a new version; returns the version."""
        s = self.settings
        with lock:
            version = state.next_version()
            bundle = dump_bundle(state.policy, state.fmap, key=s.policy.signing_key.encode(),
                                 version=version)
            report = state.fairness.window_report()
        self.record_version(version)
        key = s.kafka.group_id.encode()
        self.producer.send(s.topics.policies, key=key, value=bundle)
        fairness = {"policy_version": version, "ts": time.time(), "window": asdict(report),
                    "disparity_target": s.fairness.disparity_target}
        self.producer.send(s.topics.fairness, key=key, value=_json(fairness))
        m = self.metrics
        m.policies_published.inc()
        m.policy_last_published.set(time.time())
        m.policy_version.set(version)
        m.disparity_target.set(s.fairness.disparity_target)
        if report.disparity == report.disparity:  # NaN until some reward has been seen
            m.exposure_disparity.set(report.disparity)
        for group, share in report.exposure_share.items():
            m.exposure_share.labels(item_group=group).set(share)
        for group, rate in report.reward_rate.items():
            m.reward_rate.labels(user_group=group).set(rate)
        self._last = time.monotonic()
        self._since = 0
        log.info("published policy v%d (%s, %d updates)", version, state.fmap.feature_space,
                 state.policy.n_updates)
        return version

    def settle(self) -> None:
        """Wait until every bundle and fairness report sent so far is acknowledged."""
        self.producer.flush()

    def close(self) -> None:
        self.producer.flush()
        self.producer.close()


def _json(obj: Any) -> bytes:
    """JSON with NaN (an undefined ratio) written as null, as strict JSON requires.

    >>> _json({"disparity": float("nan"), "shares": [0.5, float("inf")]})
    b'{"disparity": null, "shares": [0.5, null]}'
    """

    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(obj), allow_nan=False).encode()
