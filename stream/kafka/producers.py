"""Producers: the item catalog, and MovieLens replay in timestamp order."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
from kafka import KafkaProducer
from tqdm import tqdm

from stream.data import MovieLens
from stream.events import CatalogItem, Click, Event, EventCodec, Impression, encode_catalog_item
from stream.privacy import Pseudonymizer, is_pseudonym
from stream.settings import PrivacySettings, Settings

#: Share of items, by rating count, that form the popularity "head" group.
HEAD_SHARE = 0.2


def make_producer(settings: Settings) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap,
        client_id=f"{settings.kafka.client_id}-producer",
        acks="all",
        linger_ms=10,
        batch_size=256 * 1024,
        max_in_flight_requests_per_connection=1,  # keeps per-partition order under retries
    )


def popularity_group(ml: MovieLens) -> dict[str, str]:
    """item_id -> "head" for the top ``HEAD_SHARE`` of items by rating count, else "tail"."""
    ids, counts = np.unique(ml.ratings.item_id, return_counts=True)
    count = dict(zip(ids.tolist(), counts.tolist(), strict=True))
    all_counts = np.array([count.get(i, 0) for i in ml.items.item_id.tolist()])
    order = np.argsort(-all_counts, kind="stable")
    head = set(ml.items.item_id[order[: round(HEAD_SHARE * len(order))]].tolist())
    return {i: ("head" if i in head else "tail") for i in ml.items.item_id.tolist()}


def catalog_items(ml: MovieLens) -> list[CatalogItem]:
    """MovieLens items as catalog entries, with popularity and genre groups."""
    pop = popularity_group(ml)
    items = ml.items
    return [
        CatalogItem(
            item_id=str(items.item_id[i]),
            text=items.text(i),
            groups={"popularity": pop[str(items.item_id[i])],
                    "genre": items.genres[i][0] if items.genres[i] else "unknown"},
            attrs={"title": str(items.title[i]), "year": int(items.year[i])},
        )
        for i in range(len(items))
    ]


def publish_catalog(settings: Settings, items: list[CatalogItem]) -> int:
    producer = make_producer(settings)
    try:
        for item in items:
            producer.send(settings.topics.items, key=item.item_id.encode(),
                          value=encode_catalog_item(item))
        producer.flush()
    finally:
        producer.close()
    return len(items)


def replay_events(ml: MovieLens, limit: int | None = None,
                  pseudonyms: Pseudonymizer | None = None) -> Iterator[Event]:
    """Logged MovieLens ratings as events: each rating is a one-item impression
    (propensity 1, policy "logged"), followed one second later by a click when
    the rating is 4 or 5. This is an edge: users travel as ``pseudonyms`` (default: the
    default settings' key) with their gender code and age bucket only."""
    edge = pseudonyms or Pseudonymizer.from_settings(PrivacySettings())
    users = {edge.user(str(u)): edge.attrs(ml.users.attrs(i))
             for i, u in enumerate(ml.users.user_id.tolist())}
    pseudonym = {str(u): edge.user(str(u)) for u in ml.users.user_id.tolist()}
    r = ml.ratings
    n = len(r) if limit is None else min(limit, len(r))
    for i in range(n):
        user, item, ts = pseudonym[str(r.user_id[i])], str(r.item_id[i]), float(r.timestamp[i])
        request_id = f"ml100k-{i}"
        yield Impression(event_id=f"{request_id}-imp", request_id=request_id, ts=ts,
                         user_id=user, items=[item], propensities=[1.0],
                         policy_version="logged", user=users[user])
        if r.rating[i] >= 4:
            yield Click(event_id=f"{request_id}-click", request_id=request_id, ts=ts + 1.0,
                        user_id=user, item_id=item)


def replay_count(ml: MovieLens, limit: int | None = None) -> int:
    """How many events :func:`replay_events` yields: one impression per rating, one click
    per rating of 4 or 5 (the progress bar's total)."""
    n = len(ml.ratings) if limit is None else min(limit, len(ml.ratings))
    return n + int((ml.ratings.rating[:n] >= 4).sum())


def publish_events(settings: Settings, events: Iterator[Event], rate: float | None = None,
                   total: int | None = None, progress: bool = True) -> int:
    """Send events keyed by user_id, optionally throttled to ``rate`` events/s. Their
    users must be pseudonyms already (:mod:`stream.privacy`): a raw id raises
    ``ValueError`` before it reaches Kafka."""
    codec = EventCodec(settings.events.max_bytes, settings.events.max_slate)
    producer = make_producer(settings)
    start = time.monotonic()
    sent = 0
    try:
        for event in tqdm(events, total=total, unit="ev", disable=not progress,
                          desc="publishing"):
            if not is_pseudonym(event.user_id):
                raise ValueError(f"event {event.event_id!r} names a user by a raw id; "
                                 "pseudonymise it at the edge (stream.privacy)")
            producer.send(settings.topics.events, key=event.user_id.encode(),
                          value=codec.encode(event))
            sent += 1
            if rate:
                ahead = sent / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
        producer.flush()
    finally:
        producer.close()
    return sent
