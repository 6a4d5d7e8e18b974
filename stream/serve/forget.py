"""The server's part in erasure: forget cached profiles, and take erasure requests.

:class:`ErasureFollower` reads ``fairstream.erasure`` from the beginning on a thread of
its own (like the other followers) and drops the profile of every erased user the
server holds; the feedback follower then ignores their feedback that predates the
erasure (``erasures.blocks``). ``POST /admin/forget`` (admin token) calls
:meth:`ErasureFollower.forget`: the markers are published and acknowledged, and the
profile dropped here, before the server answers 202.
"""

from __future__ import annotations

import logging

from kafka import KafkaConsumer, KafkaProducer

from stream.core.erasure import Erasures
from stream.kafka.erasure import ErasureFeed, publish_erasure
from stream.metrics import ServeMetrics
from stream.serve.follower import _Follower
from stream.serve.recommender import Recommender
from stream.settings import Settings

log = logging.getLogger(__name__)

_POLL_MS = 200


class ErasureFollower(_Follower):
    """Follows fairstream.erasure into the recommender's profile store."""

    name = "erasure"

    def __init__(self, settings: Settings, recommender: Recommender,
                 metrics: ServeMetrics) -> None:
        super().__init__(settings, recommender, metrics)
        self.erasures = Erasures()
        self.feed = ErasureFeed(settings, client="serve-erasure")
        self.producer: KafkaProducer | None = None  # set by the runtime once it has one

    def _open(self) -> KafkaConsumer:
        return self.feed.open().consumer

    def _step(self) -> None:
        markers = self.feed.poll(timeout_ms=_POLL_MS)
        if markers:
            self._apply(markers)
        if not self.caught_up.is_set() and self.feed.at_end():
            self.caught_up.set()

    def _apply(self, markers: list[tuple[str, float]]) -> int:
        if not any([self.erasures.add(t, at) for t, at in markers]):
            return 0
        dropped = self.recommender.forget_profiles(self.erasures.erased)
        if dropped:
            log.info("erasure: dropped %d cached profile(s)", dropped)
        return dropped

    def forget(self, user_id: str) -> int:
        """``POST /admin/forget``: publish ``user_id``'s markers (acknowledged by Kafka) and
        drop the cached profile now; returns the number of markers."""
        markers = publish_erasure(self.settings, user_id, producer=self.producer)
        self._apply(markers)
        return len(markers)
