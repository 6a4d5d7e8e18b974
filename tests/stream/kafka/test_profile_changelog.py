"""The profiles' changelog on the real broker: a restore takes the changelog up to the
partition's folded offset, then the deltas sent after its last marker."""

from __future__ import annotations

import numpy as np
import pytest
from kafka import KafkaProducer

from bandits import SufficientStats
from learners import ProfileStore
from stream.core.delta import StatsDelta, dump_delta
from stream.kafka.profile_changelog import ProfileChangelog, encode_profile
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
        changelog.producer.send(settings.topics.profiles, partition=p, key=b"a",
                                value=encode_profile(99, np.ones(4, np.float32), 1.0, 99.0))
        changelog.flush()

        store = ProfileStore(emb_dim=4, capacity=100)
        restored = changelog.restore(store, p, end=52)
        assert (restored.from_changelog, restored.from_deltas) == (4, 3)
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
