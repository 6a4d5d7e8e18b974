"""The profiles' changelog on the real broker: a restore takes the changelog up to the
partition's folded offset, then the deltas sent after its last marker."""

from __future__ import annotations

import numpy as np
import pytest
from kafka import KafkaProducer

from bandits import SufficientStats
from learners import DiskProfileStore, ProfileStore
from stream.core.delta import StatsDelta, dump_delta
from stream.kafka.profile_changelog import CHUNK, MARKER, ProfileChangelog, encode_chunk
from stream.kafka.topics import ensure_topics

pytestmark = pytest.mark.broker


def _delta(p, start, end, users, rng):
    n = len(users)
    return StatsDelta(partition=p, start=start, end=end,
                      stats=SufficientStats.zeros(2, "fs"), users=users,
                      means=rng.random((n, 4), dtype=np.float32), weights=rng.random(n),
                      last_seen=np.full(n, float(end)))


def test_restore_is_the_changelog_then_the_deltas_after_its_last_marker(make_settings):
    settings = make_settings(stats={"exchange": True})
    ensure_topics(settings)
    rng = np.random.default_rng(0)
    key = settings.policy.signing_key.encode()
    p = 1
    chain = [_delta(p, -1, 10, ["a", "b"], rng), _delta(p, 10, 25, ["b", "c"], rng),
             _delta(p, 25, 40, ["a", "d"], rng), _delta(p, 40, 52, ["c"], rng)]
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all")
    offsets = [producer.send(settings.topics.stats, partition=p, value=dump_delta(d, key=key))
               .get(timeout=30).offset for d in chain]
    # Another partition's delta and a foreign record: left alone.
    producer.send(settings.topics.stats, partition=0,
                  value=dump_delta(_delta(0, -1, 5, ["z"], rng), key=key)).get(timeout=30)
    changelog = ProfileChangelog(settings)
    try:
        for d, offset in zip(chain[:2], offsets[:2], strict=True):  # the writer died after 2
            changelog.write(d, offset)
        # A record of a range no delta covers yet (a writer cut off mid-batch): ignored.
        changelog.producer.send(settings.topics.profiles, partition=p, key=b"c:cut:0",
                                value=encode_chunk(99, ["a"], np.ones((1, 4), np.float32),
                                                   np.ones(1), np.full(1, 99.0)))
        changelog.flush()

        store = ProfileStore(emb_dim=4, capacity=100)
        restored = changelog.restore(store, p, end=52)
        assert (restored.from_changelog, restored.from_deltas) == (3, 3)  # users: a, b, c
        # The restorer wrote what the deltas carried, as of 52, with a marker: the next
        # restore needs no delta.
        changelog.flush()
        again = ProfileChangelog(settings)
        try:
            replayed = again.restore(ProfileStore(emb_dim=4, capacity=100), p, end=52)
        finally:
            again.close()
        assert (replayed.from_changelog, replayed.from_deltas) == (4, 0)
        latest = {}
        for d in chain:
            for i, u in enumerate(d.users):
                latest[u] = d.means[i]
        assert sorted(store.entries(list(latest))[0]) == sorted(latest) == ["a", "b", "c", "d"]
        for user, mean in latest.items():
            np.testing.assert_array_equal(store.get(user), mean)

        early = ProfileStore(emb_dim=4, capacity=100)  # to an earlier point: no d, old a, c
        changelog.restore(early, p, end=25)
        assert sorted(early.entries(["a", "b", "c", "d"])[0]) == ["a", "b", "c"]
        np.testing.assert_array_equal(early.get("a"), chain[0].means[0])
        np.testing.assert_array_equal(early.get("c"), chain[1].means[1])
    finally:
        changelog.close()
        producer.close()


def _records(settings, p):
    """Every record of changelog partition ``p`` as ``(key, value)``, in log order."""
    from kafka import KafkaConsumer, TopicPartition

    from stream.kafka.tail import read_to_end

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap,
                             enable_auto_commit=False, fetch_max_wait_ms=20)
    try:
        tp = TopicPartition(settings.topics.profiles, p)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        return [(r.key, r.value) for r in read_to_end(consumer, [tp])]
    finally:
        consumer.close()


def _live(records):
    """What compaction would keep: each key's last record, without tombstones."""
    last = {}
    for key, value in records:
        last[key] = value
    return {k: v for k, v in last.items() if v is not None and k != MARKER}


@pytest.mark.parametrize("kind", ["memory", "rocksdb"])
def test_chunks_are_repacked_and_tombstoned_and_erased_users_leave(make_settings, tmp_path,
                                                                   kind):
    """Rewriting most users of a chunk repacks it (its current users in a new chunk, the
    old one tombstoned); forgetting a user rewrites its chunk without it; a restore
    reads the result, one record per chunk. The same with the owner's and the restorer's
    profiles in a disk store holding 50 of the 522 users in memory."""

    def new_store(name):
        if kind == "memory":
            return ProfileStore(emb_dim=4, capacity=10 * n)
        return DiskProfileStore(tmp_path / name, emb_dim=4, capacity=50)

    from stream.kafka.profile_changelog import decode_chunk

    settings = make_settings(stats={"exchange": True})
    ensure_topics(settings)
    rng = np.random.default_rng(1)
    p, n = 1, CHUNK + 10
    users = [f"u{i}" for i in range(n)]
    store = new_store("owner")
    changelog = ProfileChangelog(settings)
    try:
        first = _delta(p, -1, 10, users, rng)  # two chunks: CHUNK and 10 profiles
        store.put(first.users, first.means, first.weights, first.last_seen)
        changelog.write(first, 0)
        # Most of the first chunk's users change: it falls under half current.
        moved = users[:CHUNK // 2 + 1]
        second = _delta(p, 10, 20, moved, rng)
        store.put(second.users, second.means, second.weights, second.last_seen)
        changelog.write(second, 1)
        assert changelog.compact(store, {p: 20}) == CHUNK - len(moved)
        changelog.forget(["u3", f"u{n - 1}"])  # erased: held in the second and first chunks
        store.forget(["u3", f"u{n - 1}"])
        assert changelog.compact(store, {p: 20}) == (len(moved) - 1) + 9
        changelog.flush()
        live = _live(_records(settings, p))
        held = [u for v in live.values() for u in decode_chunk(v)[1]]
        assert sorted(held) == sorted(set(users) - {"u3", f"u{n - 1}"})  # each once
        assert len(live) <= 3

        restored = new_store("restorer")
        out = ProfileChangelog(settings)
        try:
            r = out.restore(restored, p, end=20)
        finally:
            out.close()
        assert "u3" not in restored and f"u{n - 1}" not in restored
        assert r.from_changelog == n - 2 and r.from_deltas == 0
        assert len(restored) == n - 2
        for u in users:
            if u in restored:
                np.testing.assert_array_equal(restored.get(u), store.get(u))
    finally:
        changelog.close()
        store.close()
