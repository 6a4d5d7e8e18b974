"""Reading back ``fairstream.policies``: the latest bundle a worker group published.

A worker that becomes the group's publisher moves its version counter past the last
published version, and a worker that starts without a checkpoint adopts that bundle's
feature map (its adapter), so its statistics join the group's (docs/scaling.md).
"""

from __future__ import annotations

import logging

from kafka import KafkaConsumer, TopicPartition

from stream.core.bundle import PolicyBundle, load_bundle
from stream.exceptions import BundleError
from stream.kafka.tail import read_to_end
from stream.settings import Settings

log = logging.getLogger(__name__)

#: bundles read back from the end before falling back to the whole (compacted) topic
_TAIL = 64


def latest_bundle(settings: Settings, timeout_s: float = 30.0) -> PolicyBundle | None:
    """The newest verified bundle under this group's key, or None when there is none.

    Bundles that fail verification are skipped (and logged): a reader must never adopt
    one, and a forged one must not move the version counter.
    """
    s = settings
    consumer = KafkaConsumer(bootstrap_servers=s.kafka.bootstrap, enable_auto_commit=False,
                             client_id=f"{s.kafka.client_id}-policy-log",
                             fetch_max_wait_ms=20,  # read_to_end: fresh ends
                             max_partition_fetch_bytes=s.policy.max_bundle_bytes,
                             fetch_max_bytes=s.policy.max_bundle_bytes)
    try:
        parts = consumer.partitions_for_topic(s.topics.policies) or {0}
        tps = [TopicPartition(s.topics.policies, p) for p in sorted(parts)]
        consumer.assign(tps)
        begin, end = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
        key = s.kafka.group_id.encode()
        for tail in (_TAIL, None):
            for tp in tps:
                start = begin[tp] if tail is None else max(begin[tp], end[tp] - tail)
                consumer.seek(tp, start)
            found = _last(consumer, tps, key, s, timeout_s)
            if found is not None or all(end[tp] - begin[tp] <= _TAIL for tp in tps):
                return found
        return None
    finally:
        consumer.close()


def _last(consumer: KafkaConsumer, tps: list[TopicPartition], key: bytes,
          s: Settings, timeout_s: float) -> PolicyBundle | None:
    best: PolicyBundle | None = None
    for rec in read_to_end(consumer, tps, timeout_s):
        if rec.key != key or rec.value is None:
            continue
        try:
            bundle = load_bundle(rec.value, key=s.policy.signing_key.encode(),
                                 dim=s.features.dim)
        except BundleError as exc:
            log.warning("skipping bundle at %s offset %d: %s", s.topics.policies,
                        rec.offset, exc)
            continue
        if best is None or bundle.version > best.version:
            best = bundle
    return best
