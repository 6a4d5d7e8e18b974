"""Idempotent creation of fairstream's topics."""

from __future__ import annotations

import logging

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from stream.settings import Settings

log = logging.getLogger(__name__)

_COMPACTED = {"cleanup.policy": "compact"}


def topic_specs(settings: Settings) -> list[NewTopic]:
    """The topics fairstream needs, with partitions and configs.

    Events are keyed by user_id and spread over ``kafka.events_partitions``
    (the parallelism of the worker group); the DLQ and the statistics deltas mirror
    that, and events and DLQ keep records for ``privacy.events_retention_s``. Catalog,
    policies, profiles and erasure markers are compacted: the latest value per key is
    the state.
    """
    t, parts = settings.topics, settings.kafka.events_partitions
    retention = {"retention.ms": str(int(settings.privacy.events_retention_s * 1000))}
    return [
        NewTopic(t.items, 1, 1, topic_configs=_COMPACTED),
        NewTopic(t.events, parts, 1, topic_configs=retention),
        # Sized for the dead letters the worker may write (stream/kafka/limits.py).
        NewTopic(t.dlq, parts, 1, topic_configs={
            **retention, "max.message.bytes": str(settings.worker.dlq_max_request_bytes)}),
        NewTopic(t.policies, 1, 1, topic_configs={
            **_COMPACTED, "max.message.bytes": str(settings.policy.max_bundle_bytes)}),
        NewTopic(t.fairness, 1, 1),
        # Partition i holds the statistics deltas of events partition i, in order; kept
        # for ever: a worker without a checkpoint folds them all (docs/scaling.md).
        NewTopic(t.stats, parts, 1, topic_configs={
            "retention.ms": "-1", "max.message.bytes": str(settings.stats.max_delta_bytes)}),
        # Each user's latest profile, in the user's events partition, in chunks of up to
        # 512 profiles (under 1 MB, Kafka's default record limit): what a partition's
        # next owner restores (stream/kafka/profile_changelog.py).
        NewTopic(t.profiles, parts, 1, topic_configs=_COMPACTED),
        NewTopic(t.erasure, 1, 1, topic_configs=_COMPACTED),
        # Experiment configurations (key config:<name>, every change a new version) and
        # the worker's results (results:<name>); the latest of each is the state.
        NewTopic(t.experiments, 1, 1, topic_configs=_COMPACTED),
        # Each user's latest serving profile (key = user id: it lands like the user's
        # events), written by the worker that learns the user, at most once per
        # worker.serving_profiles_every_s; servers read it instead of fairstream.events
        # (stream/kafka/serving_profiles.py).
        NewTopic(t.serving_profiles, parts, 1, topic_configs=_COMPACTED),
    ]


def ensure_topics(settings: Settings) -> list[str]:
    """Create whichever of the topics are missing; returns the names created."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap,
                             client_id=f"{settings.kafka.client_id}-admin")
    try:
        existing = set(admin.list_topics())
        missing = [spec for spec in topic_specs(settings) if spec.name not in existing]
        created = []
        for spec in missing:
            try:
                admin.create_topics([spec])
                created.append(spec.name)
            except TopicAlreadyExistsError:  # another process won the race
                pass
        if created:
            log.info("created topics %s", created)
        return created
    finally:
        admin.close()
