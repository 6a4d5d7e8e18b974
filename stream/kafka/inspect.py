"""Looking inside the topics without writing a consumer: ``fairstream dlq tail`` and
``fairstream policy show``.

:func:`dlq_tail` reads the newest dead letters (reason, detail, source record,
a preview of the payload). :func:`policy_show` finds a published bundle (the
newest, or a given version), verifies it with ``policy.signing_key`` (or one of
``policy.verify_keys``) as a server would, and describes it with the fairness
window published beside it. Neither prints a key: a bundle holds none, and the
keys are only used to verify.

>>> print(preview(b'{"v": 1, "type": "click"}', 12))
{"v": 1, "ty…
>>> print(preview(b"\\xff\\xfe", 12))
<2 bytes, not UTF-8: fffe>
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from stream.exceptions import BundleError, FairstreamError
from stream.settings import Settings


class NothingPublished(FairstreamError):
    """The topic holds no record of what was asked for."""


def preview(value: bytes | None, width: int = 160) -> str:
    """One line showing the start of a payload."""
    if value is None:
        return "<no value>"
    try:
        text = value.decode()
    except UnicodeDecodeError:
        return f"<{len(value)} bytes, not UTF-8: {value[:16].hex()}>"
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width] + "…"


@dataclass
class _Record:
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


def _read(settings: Settings, topic: str, last: int | None,
          timeout_s: float = 10.0) -> Iterator[_Record]:
    """Every record of ``topic`` (or about the ``last`` of each partition) up to its end."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap,
                             enable_auto_commit=False,
                             client_id=f"{settings.kafka.client_id}-inspect")
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return
        consumer.assign(tps)
        begin, end = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
        for tp in tps:
            start = begin[tp] if last is None else max(begin[tp], end[tp] - last)
            consumer.seek(tp, start)
        # The end offsets are only a hint: the embedded broker (Tansu) under-reports the
        # high watermark of batches whose records carry headers (as dead letters do). So
        # read on until every partition is past its hint and two polls came back empty.
        deadline, quiet = time.monotonic() + timeout_s, 0
        while quiet < 2 and time.monotonic() < deadline:
            got = consumer.poll(timeout_ms=200)
            for tp, records in got.items():
                for r in records:
                    yield _Record(tp.partition, r.offset, r.timestamp, r.key, r.value,
                                  {k: v for k, v in (r.headers or [])})
            behind = any(consumer.position(tp) < end[tp] for tp in tps)
            quiet = 0 if got or behind else quiet + 1
    finally:
        kafka_log = logging.getLogger("kafka")
        level = kafka_log.level
        kafka_log.setLevel(logging.CRITICAL)  # close() logs cancelled metadata refreshes
        try:
            consumer.close()
        finally:
            kafka_log.setLevel(level)


def _when(timestamp_ms: int) -> str:
    return dt.datetime.fromtimestamp(timestamp_ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def dlq_tail(settings: Settings, n: int = 10, reason: str | None = None,
             scan: int = 10_000) -> list[str]:
    """The ``n`` newest dead letters (of ``reason``, if given) among the last ``scan`` of
    each partition, oldest first, two lines each."""
    letters = [r for r in _read(settings, settings.topics.dlq, scan)
               if reason is None or r.headers.get("reason", b"").decode() == reason]
    letters.sort(key=lambda r: (r.timestamp_ms, r.partition, r.offset))
    out = []
    for r in letters[-n:] if n > 0 else []:
        h = {k: v.decode(errors="replace") for k, v in r.headers.items()}
        out.append(f"{_when(r.timestamp_ms)}  {h.get('reason', '?'):<15} "
                   f"from {h.get('source', '?')}  {preview(h.get('detail', '').encode(), 100)}")
        out.append(f"    key={preview(r.key, 40)}  {preview(r.value)}")
    return out


def _fairness_window(settings: Settings, version: int) -> dict[str, Any] | None:
    """The fairness record published with ``version``: looked for near the end first."""
    for last in (256, None):
        found = _fairness_record(settings, version, last)
        if found is not None:
            return found
    return None


def _fairness_record(settings: Settings, version: int, last: int | None
                     ) -> dict[str, Any] | None:
    found = None
    for r in _read(settings, settings.topics.fairness, last):
        try:
            record = json.loads(r.value or b"")
        except ValueError:
            continue
        if r.key == settings.kafka.group_id.encode() and \
                record.get("policy_version") == version:
            found = record
    return found


def policy_show(settings: Settings, version: int | None = None) -> list[str]:
    """Describe the newest published policy of this consumer group (or ``version``)."""
    from stream.core.bundle import load_bundle
    from stream.core.keys import KeyRing

    # Bundles are large: look at the newest few of each partition first, and read the
    # whole topic only for an older version (or another group's interleaved records).
    for last in (16, None):
        chosen, versions = _find_bundle(settings, version, last)
        if chosen is not None:
            break
    if chosen is None:
        have = f"; versions there: {_ranges(versions)}" if versions else ""
        raise NothingPublished(
            f"no policy {'' if version is None else f'version {version} '}of group "
            f"{settings.kafka.group_id} on {settings.topics.policies}{have}")
    v, record = chosen
    lines = [f"policy version {v} of group {settings.kafka.group_id} "
             f"({settings.topics.policies} partition {record.partition} offset "
             f"{record.offset}, {len(record.value):,} bytes, written {_when(record.timestamp_ms)})"]
    try:
        bundle = load_bundle(record.value, key=KeyRing.from_settings(settings.policy),
                             dim=settings.features.dim)
    except BundleError as exc:
        raise BundleError(exc.reason, f"policy version {v} does not verify ({exc}); a "
                                      "server would refuse it. Check policy.signing_key "
                                      "(FAIRSTREAM_POLICY__SIGNING_KEY) and "
                                      "policy.verify_keys") from None
    p, fmap = bundle.policy, bundle.fmap
    hyper = p.hyper_parameters()
    source = hyper.get("source")
    lines += [
        "  verified: SHA-256 checksum and HMAC-SHA256 signature (policy.signing_key or "
        "policy.verify_keys, not shown)",
        f"  created: {bundle.created_at}",
        f"  feature space: {bundle.feature_space} (dim {fmap.dim}: item {fmap.k_item}, "
        f"profile {fmap.k_profile}, profile x item {fmap.k_inter}, attributes 9, bias 1)",
        f"  algorithm: {p.algorithm}" + (f" (serving view of {source})" if source else ""),
        f"  updates: {p.n_updates:,} rows learned",
    ]
    if getattr(p, "uses_item_ids", False) and hasattr(p, "item_ids"):
        lines.append(f"  items with terms of their own: {len(p.item_ids):,}")
    lines.append("  hyper-parameters: " + ", ".join(
        f"{k}={v}" for k, v in sorted(hyper.items()) if k != "source"))
    window = _fairness_window(settings, v)
    if window is None:
        lines.append(f"  fairness window: none published for version {v}")
    else:
        w = window["window"]
        lines.append(f"  fairness window: {w['slates']:,} slates, exposure disparity "
                     f"{_num(w['disparity'])} (target {_num(window['disparity_target'])})")
        lines.append("    exposure share: " + _shares(w["exposure_share"]))
        lines.append("    merit share:    " + _shares(w["merit_share"]))
        lines.append("    reward rate:    " + _shares(w["reward_rate"])
                     + f" (largest gap {_num(w['reward_rate_gap'])})")
    return lines


def _num(value: float | None) -> str:
    """A figure, or n/a for one the window had no data for (published as null)."""
    return "n/a" if value is None or value != value else f"{value:.4g}"


def _find_bundle(settings: Settings, version: int | None, last: int | None
                 ) -> tuple[tuple[int, _Record] | None, list[int]]:
    group = settings.kafka.group_id.encode()
    chosen: tuple[int, _Record] | None = None
    versions = []
    for r in _read(settings, settings.topics.policies, last):
        if r.key != group or r.value is None:
            continue
        v = _header_version(r.value)
        if v is None:
            continue
        versions.append(v)
        if (version is None and (chosen is None or v >= chosen[0])) or v == version:
            chosen = (v, r)
    return chosen, versions


def _shares(values: dict[str, float | None]) -> str:
    return ", ".join(f"{k} {_num(v)}" for k, v in sorted(values.items())) or "none"


def _ranges(versions: list[int]) -> str:
    vs = sorted(set(versions))
    return f"{vs[0]}..{vs[-1]} ({len(vs)})"


def _header_version(data: bytes) -> int | None:
    """The version a bundle's header claims, before verifying it (to find the record)."""
    from stream.core.bundle import _U64, MAGIC

    try:
        if not data.startswith(MAGIC):
            return None
        (hlen,) = _U64.unpack_from(data, len(MAGIC))
        start = len(MAGIC) + _U64.size
        return int(json.loads(data[start:start + hlen])["version"])
    except (ValueError, KeyError, TypeError, IndexError):
        return None
