"""Erasure with partition-owned profiles (docs/scaling.md), on the real broker with real
MovieLens events: a user erased while the partition's owner runs leaves its memory and
the profiles' changelog; a user erased while no worker runs is forgotten again after
the next owner restores the changelog, and its profile leaves the changelog then."""

from __future__ import annotations

import pytest
from kafka import KafkaConsumer, TopicPartition
from test_scale import N_RATINGS, PARTITIONS, _covers, _high, _settings, _wait

from learners import DiskProfileStore
from stream.kafka.erasure import publish_erasure
from stream.kafka.producers import catalog_items, publish_catalog, publish_events, replay_events
from stream.kafka.profile_changelog import MARKER, decode_chunk
from stream.kafka.tail import read_to_end
from stream.kafka.topics import ensure_topics
from stream.privacy import Pseudonymizer
from stream.worker import Worker, WorkerThread
from stream.worker.profile_store import profile_dir

pytestmark = [pytest.mark.broker, pytest.mark.model]


def _in_files(worker, encoder) -> set[str]:
    """The users in a stopped worker's profile store, read from its files."""
    store = DiskProfileStore(profile_dir(worker.settings), emb_dim=encoder.dim)
    try:
        return set(store.users())
    finally:
        store.close()


def _changelog_users(settings) -> set[str]:
    """Every user with a profile in a record compaction would keep (each key's last
    record, tombstones and markers left out), over all partitions."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap,
                             enable_auto_commit=False, fetch_max_wait_ms=20)
    try:
        tps = [TopicPartition(settings.topics.profiles, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        last = {}
        for rec in read_to_end(consumer, tps):
            last[(rec.partition, rec.key)] = rec.value
    finally:
        consumer.close()
    return {u for (_, key), value in last.items() if value is not None and key != MARKER
            for u in decode_chunk(value)[1]}


def _held(worker, user) -> bool:
    with worker.lock:
        return user in worker.state.profiles


def test_an_erased_users_profile_leaves_the_changelog_and_never_comes_back(
        make_settings, movielens, encoder, tmp_path):
    settings = _settings(make_settings)
    ensure_topics(settings)
    publish_catalog(settings, catalog_items(movielens))
    edge = Pseudonymizer.from_settings(settings.privacy)
    events = list(replay_events(movielens, limit=N_RATINGS, pseudonyms=edge))
    raw = {edge.user(str(u)): str(u) for u in movielens.users.user_id.tolist()}
    publish_events(settings, iter(events), progress=False)
    high = _high(events)

    first = Worker(settings.replace(worker={"checkpoint_path": str(tmp_path / "a.npz")}),
                   encoder=encoder)
    running = WorkerThread(first).start()
    try:
        _wait("the first worker to cover every partition",
              lambda: _covers(first.state.offsets, high), running.is_alive)
        with first.lock:
            users = sorted(first.state.profiles.users())
        assert len(users) > 10
        erased_live, erased_later, kept = users[0], users[1], users[2:]
        _wait("the changelog to hold every profile",
              lambda: set(users) <= _changelog_users(settings), running.is_alive)

        publish_erasure(settings, raw[erased_live])
        _wait("the erased user to leave the worker and the changelog",
              lambda: not _held(first, erased_live)
              and erased_live not in _changelog_users(settings), running.is_alive)
    finally:
        running.stop(timeout_s=120)
    on_disk = _changelog_users(settings)
    assert erased_live not in on_disk and set(kept) | {erased_later} <= on_disk
    # The worker's own profile store (RocksDB, the default with the exchange) lost it too.
    assert _in_files(first, encoder) == set(kept) | {erased_later}

    # Nobody runs when the second user is erased: the changelog still holds it.
    publish_erasure(settings, raw[erased_later])
    assert erased_later in _changelog_users(settings)

    # A new container, no checkpoint file: its partitions' profiles come from the
    # changelog; forgetting runs again on them before it learns anything.
    second = Worker(settings.replace(worker={"checkpoint_path": str(tmp_path / "b.npz")}),
                    encoder=encoder)
    running = WorkerThread(second).start()
    try:
        _wait("the second worker to own every partition",
              lambda: sorted(second._assigned) == list(range(PARTITIONS)), running.is_alive)
        assert not _held(second, erased_live) and not _held(second, erased_later)
        assert all(_held(second, u) for u in kept)
        _wait("the later-erased user to leave the changelog",
              lambda: erased_later not in _changelog_users(settings), running.is_alive)
    finally:
        running.stop(timeout_s=120)
    on_disk = _changelog_users(settings)
    assert not {erased_live, erased_later} & on_disk and set(kept) <= on_disk
    assert _in_files(second, encoder) == set(kept)
