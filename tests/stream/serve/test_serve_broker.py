"""The server on the real broker: policy pick-up and hot swap, rejection, impressions,
feedback into profiles, graceful SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition

from stream.events import Click, EventCodec, Impression
from stream.kafka.producers import make_producer, publish_catalog
from stream.kafka.topics import ensure_topics
from stream.privacy import Pseudonymizer
from stream.serve import ServerThread, ServeRuntime, request_rng
from stream.settings import ServeSettings
from tests.stream.serve.conftest import make_bundle, open_bundle, wait_for

pytestmark = [pytest.mark.broker, pytest.mark.model]


def send_policy(settings, data: bytes) -> None:
    producer = make_producer(settings)
    producer.send(settings.topics.policies, key=settings.kafka.group_id.encode(), value=data)
    producer.flush()
    producer.close()


def read_events(settings, want: int, timeout_s: float = 15.0) -> list:
    codec = EventCodec(settings.events.max_bytes, settings.events.max_slate)
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(settings.topics.events, p)
           for p in range(settings.kafka.events_partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning()
    out, deadline = [], time.monotonic() + timeout_s
    while len(out) < want and time.monotonic() < deadline:
        for records in consumer.poll(300).values():
            out.extend((r.key, codec.decode(r.value)) for r in records)
    consumer.close()
    return out


@pytest.fixture
def server(make_settings, ml_items, ml_catalog, encoder):
    settings = make_settings(bandit={"epsilon": 0.3})
    ensure_topics(settings)
    publish_catalog(settings, ml_items)
    send_policy(settings, make_bundle(settings, ml_catalog, 1))
    runtime = ServeRuntime(settings, ServeSettings(seed=7, profiles="events"),
                           encoder=encoder).start()
    with ServerThread(runtime.app) as srv:
        runtime.wait_ready(60)
        yield settings, runtime, httpx.Client(base_url=srv.url, timeout=10)
    runtime.close()


def test_hot_swap_rejection_and_impressions_on_the_broker(server, ml_catalog):
    settings, runtime, client = server
    assert client.get("/readyz").json()["policy_version"] == 1

    # A newer verified policy is picked up within 5 s.
    v2 = make_bundle(settings, ml_catalog, 2, updates=400)
    send_policy(settings, v2)
    wait_for(lambda: client.get("/readyz").json()["policy_version"] == 2, 5.0, "v2 served")

    # A tampered one (one byte flipped) is refused, counted, and v2 keeps serving.
    bad = bytearray(make_bundle(settings, ml_catalog, 3))
    bad[-40] ^= 0x80
    send_policy(settings, bytes(bad))
    reg = runtime.metrics.registry
    wait_for(lambda: runtime.policies.rejected == 1, 5.0, "rejection")
    assert reg.get_sample_value("fairstream_serve_policy_rejected_total",
                                {"reason": "checksum"}) == 1
    assert reg.get_sample_value("fairstream_serve_policy_version") == 2

    # Impressions carry the policy's own propensities (recomputed here, same seed).
    cands = ml_catalog.ids[10:60]
    user = {"gender": "M", "age": 40}
    answers = []
    for i in range(6):
        r = client.post("/recommend", json={"user_id": f"imp-u{i}", "user": user,
                                            "candidates": cands, "k": 5})
        assert r.status_code == 200, r.text
        answers.append(r.json())
    assert all(a["policy_version"] == "2" for a in answers)
    events = read_events(settings, want=len(answers))
    shown = {e.request_id: (key, e) for key, e in events if isinstance(e, Impression)}
    bundle = open_bundle(settings, v2)
    rows = [ml_catalog.index[c] for c in cands]
    X = bundle.fmap.transform(None, np.zeros(384), user,
                              adapted_items=bundle.fmap.adapt(ml_catalog.embeddings[rows]))
    edge = Pseudonymizer.from_settings(settings.privacy)
    for i, a in enumerate(answers):
        key, imp = shown[a["request_id"]]
        # Kafka holds the pseudonym and the attribute buckets, not the id nor the raw age.
        assert key == imp.user_id.encode() == edge.user(f"imp-u{i}").encode()
        assert imp.policy_version == "2"
        assert imp.items == a["items"] and imp.user == {"gender": "M", "age": "35-44"}
        slate = bundle.policy.select(X, 5, rng=request_rng(7, a["request_id"]),
                                     item_ids=cands if bundle.policy.uses_item_ids else None)
        assert imp.items == [cands[i] for i in slate.indices]
        np.testing.assert_allclose(imp.propensities, slate.propensities, rtol=1e-12)
        assert any(p < 1 for p in imp.propensities)  # ε = 0.3: not a trivial 1.0
    wait_for(lambda: reg.get_sample_value("fairstream_serve_impressions_logged_total")
             >= len(answers), 5.0, "impression acks")

    # Feedback is forwarded as a Click keyed by user_id, and moves the server's profile.
    item = answers[0]["items"][0]
    r = client.post("/feedback", json={"type": "click", "user_id": "imp-u0",
                                       "request_id": answers[0]["request_id"], "item_id": item})
    assert r.status_code == 202, r.text
    # ... and stops the clicked item's impression discount at once (the rest stay discounted)
    pen = runtime.recommender.recent.penalties(edge.user("imp-u0"), answers[0]["items"],
                                               now=time.time())
    assert pen.tolist() == [0.0] + [-runtime.recommender.recent.strength] * 4
    wait_for(lambda: edge.user("imp-u0") in runtime.recommender.profiles, 5.0,
             "profile update")
    clicks = [(k, e) for k, e in read_events(settings, want=len(answers) + 1)
              if isinstance(e, Click)]
    assert clicks == [(edge.user("imp-u0").encode(), clicks[0][1])]
    assert clicks[0][1].item_id == item and "imp-u0" not in runtime.recommender.profiles


def test_run_server_exits_0_on_sigterm(make_settings, tmp_path):
    settings = make_settings()
    from stream.kafka.broker import free_port

    port = free_port()
    env = {**os.environ,
           "FAIRSTREAM_KAFKA__BOOTSTRAP": settings.kafka.bootstrap,
           "FAIRSTREAM_TOPICS__PREFIX": settings.topics.prefix,
           "FAIRSTREAM_MODEL__DEVICE": "cpu",
           "FAIRSTREAM_MODEL__EMBEDDING_CACHE": settings.model.embedding_cache,
           "FAIRSTREAM_POLICY__SIGNING_KEY": settings.policy.signing_key,
           "FAIRSTREAM_PRIVACY__PSEUDONYM_KEY": settings.privacy.pseudonym_key}
    code = ("import sys; from stream.settings import load_settings; "
            "from stream.serve import run_server; "
            f"sys.exit(run_server(load_settings(), '127.0.0.1', {port}))")
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT,
                            env=env)

    def healthy() -> bool:
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(healthy, 60.0, "server up")
    # Not ready: no catalog and no policy on this fresh namespace.
    assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 503
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, (tmp_path / "serve.log").read_text()
    log.close()
    assert "server stopped" in (tmp_path / "serve.log").read_text()
