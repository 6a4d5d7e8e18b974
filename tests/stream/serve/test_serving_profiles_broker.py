"""Servers that read only what they need, on the real broker: a worker learns clicks and
writes its users' serving profiles to ``fairstream.profiles.serving``; a server in the
default mode (``serve.profiles = "topic"``) serves with those profiles, never reads
``fairstream.events``, a fresh server starts with every profile, and an erasure
removes the profile from every server (a tombstone on the compacted topic)."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition

from stream.kafka.producers import publish_catalog
from stream.kafka.serving_profiles import decode_profile
from stream.kafka.tail import read_to_end
from stream.kafka.topics import ensure_topics
from stream.serve import ServerThread, ServeRuntime
from stream.settings import ServeSettings
from stream.worker import Worker, WorkerThread
from tests.stream.serve.conftest import wait_for
from tests.stream.serve.test_erasure_broker import _Edge

pytestmark = [pytest.mark.broker, pytest.mark.model]

ANN, BEN = "ann-serving-01", "ben-serving-02"
TOKEN = "serving-admin-token"


def _records(settings, topic: str) -> list:
    """Every record of ``topic`` up to its end offsets (read to the end, not until quiet)."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap,
                             enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    out = list(read_to_end(consumer, tps))
    consumer.close()
    return out


def _profile(runtime, user: str) -> np.ndarray | None:
    profiles = runtime.recommender.profiles
    return profiles.get(user).copy() if user in profiles else None


def _read(runtime, topic: str) -> float | None:
    return runtime.metrics.registry.get_sample_value("fairstream_serve_follow_records_total",
                                                     {"topic": topic})


def test_servers_serve_the_workers_profiles_without_reading_events(
        make_settings, ml_items, ml_catalog, encoder):
    settings = make_settings(events={"attribution_window_s": 5.0},
                             worker={"serving_profiles_every_s": 0.2},
                             bandit={"algorithm": "linucb", "epsilon": 0.0})
    ensure_topics(settings)
    publish_catalog(settings, ml_items)
    app = _Edge(settings)
    ann, ben = app.edge.user(ANN), app.edge.user(BEN)
    emb, index = ml_catalog.embeddings, ml_catalog.index
    T = time.time() - 120.0
    t = settings.topics
    decay = settings.features.profile_decay

    running = WorkerThread(Worker(settings, encoder=encoder)).start()
    runtime = ServeRuntime(settings, ServeSettings(admin_token=TOKEN), encoder=encoder).start()
    server = ServerThread(runtime.app).start()
    late = late_server = None
    try:
        runtime.wait_ready(60)
        client = httpx.Client(base_url=server.url, timeout=30)
        # The server's profile source: every partition of the serving topic, nothing else.
        assert runtime.feedback.consumer.assignment() == {
            TopicPartition(t.serving_profiles, p)
            for p in range(settings.kafka.events_partitions)}

        # Phase 1: Ann clicks two shown items, Ben one, through the server. The windows
        # are still open: the served profile is the open feedback folded in, in
        # impression-time order, a window before the worker learns it.
        app.impression(ANN, "a1", "1", ts=T)
        app.impression(ANN, "a2", "2", ts=T + 1)
        app.impression(BEN, "b1", "3", ts=T + 2)
        app.flush()
        for user, rid, item, ts in ((ANN, "a1", "1", T + 0.5), (ANN, "a2", "2", T + 1.5),
                                    (BEN, "b1", "3", T + 2.5)):
            r = client.post("/feedback", json={"type": "click", "user_id": user,
                                               "request_id": rid, "item_id": item, "ts": ts})
            assert r.status_code == 202, r.text
        e1, e2, e3 = (emb[index[i]] for i in ("1", "2", "3"))
        want_ann = (decay * e1 + e2) / (decay + 1.0)  # closed form: decayed mean, weights 1
        wait_for(lambda: (p := _profile(runtime, ann)) is not None
                 and np.allclose(p, want_ann, rtol=0, atol=1e-6), 120, "Ann's two clicks")
        wait_for(lambda: _profile(runtime, ben) is not None, 30, "Ben's profile")
        np.testing.assert_array_equal(_profile(runtime, ben), e3)  # one click: the item itself
        assert not running.worker.state.profiles.users()  # nothing learnt yet: windows open

        # The recommendation uses the profile: the policy's own slate for φ(Ann's profile).
        bundle = runtime.recommender.bundle
        cands = ml_catalog.ids[10:60]
        rows = [index[c] for c in cands]
        rec = runtime.recommender.recommend(ann, {}, cands, k=5)
        X = bundle.fmap.transform(None, _profile(runtime, ann), {},
                                  adapted_items=bundle.fmap.adapt(emb[rows]))
        slate = bundle.policy.select(X, 5, rng=np.random.default_rng(0))
        assert rec.items == [cands[i] for i in slate.indices]
        np.testing.assert_allclose(rec.scores, slate.scores, rtol=1e-9)
        X0 = bundle.fmap.transform(None, np.zeros(encoder.dim), {},
                                   adapted_items=bundle.fmap.adapt(emb[rows]))
        cold = bundle.policy.select(X0, 5, rng=np.random.default_rng(0))
        assert not np.allclose(cold.scores, slate.scores)

        # Phase 2: the windows close (a tick on every partition); the worker learns, and
        # the served profile is then the learnt one, bit for bit.
        app.tick(T + 100)
        app.flush()
        wait_for(lambda: {ann, ben} <= set(running.worker.state.profiles.users()), 120,
                 "the worker learning")
        with running.worker.lock:
            learnt = {u: running.worker.state.profiles.get(u).copy() for u in (ann, ben)}
        np.testing.assert_allclose(learnt[ann], want_ann, rtol=0, atol=1e-6)
        wait_for(lambda: all(np.array_equal(_profile(runtime, u), learnt[u])
                             for u in (ann, ben)), 30, "the learnt profiles served")

        # A fresh server has every profile once ready (read from the compacted topic).
        late = ServeRuntime(settings, ServeSettings(), encoder=encoder).start()
        late_server = ServerThread(late.app).start()
        late.wait_ready(60)
        for u in (ann, ben):
            np.testing.assert_array_equal(_profile(late, u), learnt[u])

        # Neither server read a record of fairstream.events, and both read profiles.
        for r in (runtime, late):
            assert _read(r, t.events) is None
            assert _read(r, t.serving_profiles) >= 2
        assert runtime.metrics.registry.get_sample_value(
            "fairstream_serve_profile_freshness_seconds_count") >= 2

        # Phase 3: Ann is forgotten through the first server: dropped there before 202;
        # the worker drops her and writes a tombstone; the other server drops her by it.
        r = client.post("/admin/forget", json={"user_id": ANN},
                        headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 202, r.text
        assert ann not in runtime.recommender.profiles
        wait_for(lambda: running.worker.metrics.registry.get_sample_value(
            "fairstream_worker_serving_profiles_written_total", {"kind": "tombstone"}) >= 1,
            60, "the worker's tombstone")
        wait_for(lambda: ann not in late.recommender.profiles, 30, "the other server forgetting")
        latest = {rec.key: rec.value for rec in _records(settings, t.serving_profiles)}
        assert latest[ann.encode()] is None  # what compaction keeps of Ann: a tombstone
        np.testing.assert_array_equal(decode_profile(latest[ben.encode()]).mean, learnt[ben])
        assert np.array_equal(_profile(runtime, ben), learnt[ben])
    finally:
        for srv in (server, late_server):
            if srv is not None:
                srv.stop()
        for rt in (runtime, late):
            if rt is not None:
                rt.close()
        running.stop()

    # A server started after the erasure never holds Ann, and holds Ben.
    after = ServeRuntime(settings, ServeSettings(), encoder=encoder).start()
    try:
        after.wait_ready(60)
        assert ann not in after.recommender.profiles
        np.testing.assert_array_equal(_profile(after, ben), learnt[ben])
    finally:
        after.close()
