"""Erasure on the real broker: one user forgotten through the server's admin endpoint,
another through ``fairstream forget``. Worker and server drop them from live state, the
worker's checkpoint stops holding them at once, a worker restored from an older
checkpoint forgets them too (and does not relearn them from the replayed events), and
afterwards neither the raw ids nor the pseudonyms appear in any file the system wrote
or in any record a compacted topic retains. The append-only events topic still holds
the pseudonyms (its retention bounds that, see the README's "Privacy")."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from stream.events import Click, EventCodec, Impression
from stream.kafka.producers import make_producer, publish_catalog
from stream.kafka.topics import ensure_topics
from stream.privacy import Pseudonymizer
from stream.serve import ServerThread, ServeRuntime
from stream.settings import ServeSettings
from stream.worker import Worker, WorkerThread
from tests.stream.serve.test_pseudonyms_broker import topic_records
from tests.stream.serve.test_serve_broker import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.model]

ALICE, BOB, CAROL = "alice.erase@example.com", "bob-erase-4711", "carol-stays-0815"
TOKEN = "erasure-admin-token"


class _Edge:
    """The test plays an app's edge: pseudonymised events at chosen event times."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self.edge = Pseudonymizer.from_settings(settings.privacy)
        self.codec = EventCodec(settings.events.max_bytes, settings.events.max_slate)
        self.producer = make_producer(settings)

    def send(self, event, partition: int | None = None) -> None:
        self.producer.send(self.settings.topics.events, key=event.user_id.encode(),
                           value=self.codec.encode(event), partition=partition)

    def impression(self, user: str, rid: str, item: str, ts: float) -> None:
        self.send(Impression(event_id=f"{rid}-imp", request_id=rid, ts=ts,
                             user_id=self.edge.user(user), items=[item], propensities=[1.0],
                             policy_version="app", user={"gender": "F", "age": "25-34"}))

    def tick(self, ts: float) -> None:
        """A stray click on every partition: moves each one's watermark to ``ts``."""
        for p in range(self.settings.kafka.events_partitions):
            self.send(Click(event_id=f"tick-{ts}-{p}", request_id=f"tick-{ts}", ts=ts,
                            user_id=self.edge.user(f"ticker-{p}"), item_id="1"), partition=p)

    def flush(self) -> None:
        self.producer.flush()


def _holds(worker: Worker, pseudonyms: set[str]) -> set[str]:
    """Which of ``pseudonyms`` the worker's live state holds (profile or open impression)."""
    with worker.lock:
        state = worker.state
        open_users = {p["user_id"] for _, _, p in state.joiner.state()["open"]}
        return {p for p in pseudonyms if p in state.profiles or p in open_users}


def _files(*roots: Path) -> dict[Path, bytes]:
    return {f: f.read_bytes() for root in roots for f in root.rglob("*") if f.is_file()}


def test_forgotten_users_leave_every_file_and_compacted_topic(make_settings, ml_items,
                                                              encoder, embedding_cache,
                                                              tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    # As `fairstream` sets it: kafka-python's DEBUG lines print whole produce requests.
    caplog.set_level(logging.WARNING, logger="kafka")
    settings = make_settings(events={"attribution_window_s": 5.0})
    run_dir = Path(settings.worker.checkpoint_path).parent / "run"
    settings = settings.replace(worker={"checkpoint_path": str(run_dir / "checkpoint.npz")})
    ensure_topics(settings)
    publish_catalog(settings, ml_items)
    app = _Edge(settings)
    pseudonyms = {u: app.edge.user(u) for u in (ALICE, BOB, CAROL)}
    erased = {pseudonyms[ALICE], pseudonyms[BOB]}
    T = time.time() - 3600.0
    ckpt = Path(settings.worker.checkpoint_path)

    running = WorkerThread(Worker(settings, encoder=encoder)).start()
    runtime = ServeRuntime(settings, ServeSettings(admin_token=TOKEN, profiles="events"),
                           encoder=encoder).start()
    server = ServerThread(runtime.app).start()
    try:
        runtime.wait_ready(60)
        client = httpx.Client(base_url=server.url, timeout=30)
        # Phase 1: each user is shown an item by an app and clicks it through the server
        # (by raw id); a later tick closes the impressions: profiles in worker and server.
        for n, user in enumerate((ALICE, BOB, CAROL)):
            app.impression(user, f"r1-{n}", str(n + 1), ts=T)
        app.flush()
        for n, user in enumerate((ALICE, BOB, CAROL)):
            r = client.post("/feedback", json={"type": "click", "user_id": user,
                                               "request_id": f"r1-{n}", "item_id": str(n + 1),
                                               "ts": T + 1})
            assert r.status_code == 202, r.text
        wait_for(lambda: runtime.feedback.observed >= 3, 30, "server profiles")
        app.tick(T + 100)
        app.flush()
        wait_for(lambda: _holds(running.worker, set(pseudonyms.values()))
                 == set(pseudonyms.values()), 120, "worker profiles")
        wait_for(lambda: all(p.encode() in ckpt.read_bytes() for p in pseudonyms.values()),
                 30, "a checkpoint holding the profiles")
        older = tmp_path / "older-checkpoint.npz"  # the test's copy, not the system's
        shutil.copy(ckpt, older)
        shutil.copy(ckpt.with_name(ckpt.name + ".published"), tmp_path / "older.published")

        # Phase 2: an impression each, still open when the users are forgotten.
        for n, user in enumerate((ALICE, BOB, CAROL)):
            app.impression(user, f"r2-{n}", str(n + 4), ts=T + 200)
        app.flush()
        wait_for(lambda: running.worker.report.by_type.get("impression", 0) >= 6, 30,
                 "open impressions")
        assert _holds(running.worker, erased) == erased
        for user in (ALICE, BOB, CAROL):  # served once: the impression discount remembers
            assert client.post("/recommend", json={"user_id": user, "k": 1}).status_code == 200
        assert set(pseudonyms.values()) <= set(runtime.recommender.recent.users())

        # Forget Alice through the server (behind the admin token), Bob through the CLI.
        r = client.post("/admin/forget", json={"user_id": ALICE})
        assert r.status_code == 401 and pseudonyms[ALICE] in runtime.recommender.profiles
        r = client.post("/admin/forget", json={"user_id": ALICE},
                        headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 202 and r.json() == {"forgotten": True, "markers": 1}, r.text
        assert pseudonyms[ALICE] not in runtime.recommender.profiles  # dropped before 202
        env = {**os.environ, "FAIRSTREAM_KAFKA__BOOTSTRAP": settings.kafka.bootstrap,
               "FAIRSTREAM_TOPICS__PREFIX": settings.topics.prefix,
               "FAIRSTREAM_PRIVACY__PSEUDONYM_KEY": settings.privacy.pseudonym_key}
        done = subprocess.run([sys.executable, "-m", "stream.cli", "forget", BOB], env=env,
                              text=True, capture_output=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        wait_for(lambda: not _holds(running.worker, erased), 30, "the worker forgetting")
        wait_for(lambda: not any(p in runtime.recommender.profiles for p in erased), 30,
                 "the server forgetting")
        wait_for(lambda: not any(p.encode() in ckpt.read_bytes() for p in erased), 30,
                 "a checkpoint without them")
        assert _holds(running.worker, {pseudonyms[CAROL]}) == {pseudonyms[CAROL]}
        assert pseudonyms[CAROL] in runtime.recommender.profiles
        assert set(runtime.recommender.recent.users()) & erased == set()
        assert pseudonyms[CAROL] in runtime.recommender.recent.users()
        final_offsets = dict(running.worker.state.offsets)
        running.stop()

        # A worker restored from the older checkpoint forgets them before anything else,
        # and replaying phase 2 does not bring their impressions back.
        shutil.copy(older, ckpt)
        shutil.copy(tmp_path / "older.published", ckpt.with_name(ckpt.name + ".published"))
        older.unlink()
        running = WorkerThread(Worker(settings, encoder=encoder)).start()
        assert not _holds(running.worker, erased)
        assert not any(p.encode() in ckpt.read_bytes() for p in erased)
        wait_for(lambda: dict(running.worker.state.offsets) == final_offsets, 120,
                 "the replay of what followed the older checkpoint")
        assert not _holds(running.worker, erased)
        assert _holds(running.worker, {pseudonyms[CAROL]}) == {pseudonyms[CAROL]}
    finally:
        running.stop()
        server.stop()
        runtime.close()

    secrets = [s.encode() for s in (ALICE, BOB, *erased)]
    written = _files(run_dir, embedding_cache)
    assert ckpt in written and pseudonyms[CAROL].encode() in written[ckpt]
    for path, blob in written.items():
        assert not any(s in blob for s in secrets), path
    logs = caplog.text + done.stdout + done.stderr
    leaks = [line for line in logs.splitlines() if any(s.decode() in line for s in secrets)]
    assert not leaks, leaks[:5]
    t = settings.topics
    for topic in (t.items, t.policies, t.erasure):
        for record in topic_records(settings, topic, 1):
            blob = (record.key or b"") + (record.value or b"")
            assert not any(s in blob for s in secrets), topic
    assert len(topic_records(settings, t.erasure, 1)) == 2
    # What erasure cannot reach: the append-only events topic, until its retention.
    events = topic_records(settings, t.events, settings.kafka.events_partitions)
    assert any(pseudonyms[ALICE].encode() == r.key for r in events)
