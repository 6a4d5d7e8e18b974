"""The broker's record-size limits, read at start and checked against our settings.

A dead letter is the one record fairstream writes whose size it does not choose: a
rejected value is copied as it came. The worker bounds it with
``worker.dlq_max_value_bytes`` (larger values become markers, see
:mod:`stream.worker.deadletter`) and sizes its DLQ producer's requests with
``worker.dlq_max_request_bytes``. Both promises hold only if the broker accepts a
batch that large on the DLQ topic: its ``max.message.bytes`` (the topic's own, else
the broker's ``message.max.bytes``). :func:`check_dlq_limits` reads it with
DescribeConfigs and stops the worker with one line naming the settings when it is
smaller; a broker that reports neither is logged, and a value it refuses still
becomes a marker at send time.

>>> dlq_limit_error("fairstream.events.dlq", 200_000, "topic max.message.bytes",
...                 value_bytes=524_288, request_bytes=1_048_576)[:72]
'worker.dlq_max_request_bytes (1048576) is larger than the broker accepts'
>>> dlq_limit_error("fairstream.events.dlq", 2_000_000, "topic max.message.bytes",
...                 value_bytes=524_288, request_bytes=1_048_576) is None
True
"""

from __future__ import annotations

import logging
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import KafkaError

from stream.exceptions import ConfigError
from stream.settings import Settings

log = logging.getLogger(__name__)

TOPIC_LIMIT = "max.message.bytes"
BROKER_LIMIT = "message.max.bytes"


def _value(described: dict[str, Any], kind: str, name: str, key: str) -> int | None:
    entry = described.get(kind, {}).get(name, {}).get(key)
    value = entry.get("value") if isinstance(entry, dict) else None
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def message_limit(admin: Any, topic: str) -> tuple[int | None, str]:
    """(bytes, where it came from) for the largest batch the broker takes on ``topic``:
    the topic's ``max.message.bytes``, else the smallest ``message.max.bytes`` any broker
    reports; (None, why) when the broker reports neither. All of a resource's configs
    are asked for, unfiltered: Tansu drops the connection on a request that names config
    keys, and tags configs set at creation as defaults, which kafka-python's default
    filter ("modified") leaves out."""
    try:
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)],
            config_filter="all")
    except KafkaError as exc:
        return None, f"DescribeConfigs failed: {exc}"
    limit = _value(described, "topic", topic, TOPIC_LIMIT)
    if limit is not None:
        return limit, f"topic {TOPIC_LIMIT}"
    limits = []
    try:
        nodes = [str(b["broker_id"]) for b in admin.describe_cluster()["brokers"]]
    except (KafkaError, KeyError) as exc:
        return None, f"DescribeCluster failed: {exc}"
    for node in nodes:
        try:
            described = admin.describe_configs(
                [ConfigResource(ConfigResourceType.BROKER, node)],
                config_filter="all")
        except KafkaError:
            continue
        value = _value(described, "broker", node, BROKER_LIMIT)
        if value is not None:
            limits.append(value)
    if limits:
        return min(limits), f"broker {BROKER_LIMIT}"
    return None, f"the broker reports neither {TOPIC_LIMIT} nor {BROKER_LIMIT}"


def dlq_limit_error(topic: str, limit: int, source: str, *, value_bytes: int,
                    request_bytes: int) -> str | None:
    """The one-line error when the DLQ settings ask for more than the broker takes."""
    if request_bytes <= limit:
        return None
    return (f"worker.dlq_max_request_bytes ({request_bytes}) is larger than the broker "
            f"accepts on {topic} ({source} = {limit}): lower it to at most {limit} (with "
            f"worker.dlq_max_value_bytes ({value_bytes}) 64 KiB below it) or raise the "
            f"topic's {TOPIC_LIMIT}")


def check_dlq_limits(settings: Settings) -> int | None:
    """Raise :class:`ConfigError` if the broker cannot hold the dead letters the settings
    allow; return the limit it reported (None: not reported, logged)."""
    w, topic = settings.worker, settings.topics.dlq
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap,
                             client_id=f"{settings.kafka.client_id}-admin")
    try:
        limit, source = message_limit(admin, topic)
    finally:
        admin.close()
    if limit is None:
        log.warning("DLQ limits not checked: %s; a dead letter the broker refuses as too "
                    "large still goes out as a marker", source)
        return None
    error = dlq_limit_error(topic, limit, source, value_bytes=w.dlq_max_value_bytes,
                            request_bytes=w.dlq_max_request_bytes)
    if error:
        raise ConfigError(error)
    log.info("DLQ limits: the broker takes %d bytes on %s (%s); dead letters over %d bytes "
             "become markers", limit, topic, source, w.dlq_max_value_bytes)
    return limit
