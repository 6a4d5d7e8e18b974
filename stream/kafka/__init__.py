"""Kafka clients and administration: topics, producers, the embedded broker, and the
worker's fetch process (the consumer-group member that parses and validates records).

Nothing here imports the learning core (:mod:`stream.core`, torch): the fetch
process imports this package and starts in well under a second.
"""

from stream.kafka.broker import EmbeddedBroker, free_port, run_broker, wait_for_kafka
from stream.kafka.fetch import FetchProcess
from stream.kafka.producers import (
    catalog_items,
    make_producer,
    popularity_group,
    publish_catalog,
    publish_events,
    replay_events,
)
from stream.kafka.topics import ensure_topics, topic_specs

__all__ = [
    "EmbeddedBroker",
    "FetchProcess",
    "catalog_items",
    "ensure_topics",
    "free_port",
    "make_producer",
    "popularity_group",
    "publish_catalog",
    "publish_events",
    "replay_events",
    "run_broker",
    "topic_specs",
    "wait_for_kafka",
]
