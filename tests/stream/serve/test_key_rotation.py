"""Rotating the policy signing key on the real broker, with requests flowing all along:
servers hold old + new, workers switch to the new key, then the old one is retired.
No request fails, no bundle is rejected while both are held, and no key shows in any
log line, metric or readiness answer."""

from __future__ import annotations

import logging
import threading

import httpx
import pytest
from prometheus_client import generate_latest

from stream.kafka.producers import publish_catalog
from stream.kafka.topics import ensure_topics
from stream.serve import ServerThread, ServeRuntime
from stream.worker import Worker, WorkerThread
from tests.stream.serve.test_serve_broker import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.model]

OLD, NEW = "rotation-old-6f1c2b", "rotation-new-93ad7e"


class _Load:
    """POST /recommend in a loop on a thread of its own; every answer's code and version."""

    def __init__(self, url: str, candidates: list[str]) -> None:
        self.url, self.candidates = url, candidates
        self.codes: list[int] = []
        self.versions: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            i = 0
            while not self._stop.is_set():
                r = client.post("/recommend", json={"user_id": f"rot-u{i % 7}",
                                                    "candidates": self.candidates, "k": 3})
                self.codes.append(r.status_code)
                if r.status_code == 200:
                    self.versions.append(r.json()["policy_version"])
                i += 1

    def __enter__(self) -> _Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def _served(runtime) -> int:
    bundle = runtime.recommender.bundle
    return bundle.version if bundle else 0


def test_rotation_without_a_failed_request(make_settings, ml_items, ml_catalog, encoder,
                                           caplog):
    caplog.set_level(logging.DEBUG)
    base = make_settings(policy={"signing_key": OLD})
    ensure_topics(base)
    publish_catalog(base, ml_items)

    def worker(signing: str, verify: str = "") -> WorkerThread:
        s = base.replace(policy={"signing_key": signing, "verify_keys": verify})
        return WorkerThread(Worker(s, encoder=encoder)).start()

    running = worker(OLD)  # publishes its starting policy, signed with the old key
    first_version = running.worker.state.version
    # Step 1: the server holds old + new.
    serving = base.replace(policy={"signing_key": OLD, "verify_keys": NEW})
    runtime = ServeRuntime(serving, encoder=encoder).start()
    with ServerThread(runtime.app) as srv:
        runtime.wait_ready(60)
        with _Load(srv.url, ml_catalog.ids[:20]) as load:
            wait_for(lambda: len(load.codes) >= 20, 30, "requests before the switch")
            running.stop()
            # Step 2: the worker signs with the new key; it still opens its checkpoint,
            # written with the old one, because it accepts the old key too.
            running = worker(NEW, verify=OLD)
            switched = running.worker.state.version
            assert switched > first_version
            wait_for(lambda: _served(runtime) == switched, 30, "the new-key policy served")
            seen = len(load.codes)
            wait_for(lambda: len(load.codes) >= seen + 20, 30, "requests after the switch")
        running.stop()
        assert load.codes and set(load.codes) == {200}, sorted(set(load.codes))
        assert {str(first_version), str(switched)} <= set(load.versions)
        reg = runtime.metrics.registry
        assert runtime.policies.rejected == 0
        server_metrics = generate_latest(reg).decode()
        readiness = str(runtime.readiness())
    worker_metrics = generate_latest(running.worker.metrics.registry).decode()
    runtime.close()

    # Step 3: the old key is retired. A worker with the new key alone opens the checkpoint
    # its predecessor wrote with it, and a server with the new key alone serves the newest
    # policy, refusing the old-key bundles still on the topic.
    retired = base.replace(policy={"signing_key": NEW})
    running = WorkerThread(Worker(retired, encoder=encoder)).start()
    last = running.worker.state.version
    running.stop()
    fresh = ServeRuntime(retired, encoder=encoder).start()
    try:
        fresh.wait_ready(60)
        wait_for(lambda: _served(fresh) == last, 30, "the newest policy served")
        assert fresh.metrics.registry.get_sample_value(
            "fairstream_serve_policy_rejected_total", {"reason": "signature"}) >= 1
    finally:
        fresh.close()

    for text in (caplog.text, server_metrics, worker_metrics, readiness):
        assert OLD not in text and NEW not in text
