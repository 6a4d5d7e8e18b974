"""``fairstream serve``: the runtime (recommender + followers + event log) under uvicorn.

:class:`ServeRuntime` assembles the parts and owns their lifecycle;
:class:`ServerThread` runs it under uvicorn in a background thread (tests, the
bench, the demo); :func:`run_server` is the blocking CLI entry point that
shuts down gracefully on SIGTERM/SIGINT and returns 0.

Shutdown order: stop accepting (uvicorn drains requests in flight), stop the
followers, drain the event-log queue into the producer, flush and close it,
so no logged impression is lost on a clean stop.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from kafka import KafkaProducer

from bandits import ExposureController
from learners import Encoder, ProfileStore
from stream.core.keys import refuse_dev_key
from stream.core.recent import recent_impressions
from stream.events import EventCodec
from stream.experiments.config import experiment_from_settings
from stream.kafka.experiments import kafka_publisher
from stream.kafka.topics import ensure_topics
from stream.metrics import ServeMetrics
from stream.privacy import Pseudonymizer
from stream.serve.app import ServeContext, create_app
from stream.serve.experiments import ExperimentControl, ExperimentFollower
from stream.serve.follower import (
    CatalogFollower,
    FeedbackFollower,
    PolicyFollower,
    ProfileFollower,
)
from stream.serve.forget import ErasureFollower
from stream.serve.impressions import EventLog, ProducerHealth, kafka_send
from stream.serve.protocol import REASON as HEAD_TIMEOUT
from stream.serve.protocol import head_deadline_protocol
from stream.serve.recommender import Recommender
from stream.settings import ServeSettings, Settings

log = logging.getLogger(__name__)


class ServeRuntime:
    """Everything behind the HTTP API, wired from one :class:`Settings`.

    ``serve`` defaults to ``settings.serve``. Pass ``encoder`` to share a loaded model.
    """

    def __init__(self, settings: Settings, serve: ServeSettings | None = None,
                 encoder: Encoder | None = None, metrics: ServeMetrics | None = None) -> None:
        self.settings = settings
        self.serve = serve or settings.serve
        self.metrics = metrics or ServeMetrics()
        self.encoder = encoder or Encoder(cache_dir=settings.embedding_cache_dir,
                                          device=settings.model.device,
                                          batch_size=settings.model.batch_size)
        ev, feat = settings.events, settings.features
        self.codec = EventCodec(ev.max_bytes, ev.max_slate, ev.max_clock_skew_s)
        self.producer: KafkaProducer | None = None
        self.event_log: EventLog | None = None
        self.health = ProducerHealth(self.serve.produce_failures_unready)
        self.recommender = Recommender(
            seed=self.serve.seed,
            profiles=ProfileStore(emb_dim=self.encoder.dim, decay=feat.profile_decay,
                                  capacity=feat.profile_capacity),
            max_candidates=self.serve.max_candidates, max_k=self.serve.max_k,
            feedback_weights={"click": ev.click_weight, "purchase": ev.purchase_weight},
            exposure=ExposureController(lam=settings.fairness.exposure_strength,
                                        target=settings.fairness.exposure_target),
            recent=recent_impressions(settings), thompson_v=settings.bandit.v)
        self.policies = PolicyFollower(settings, self.recommender, self.metrics,
                                       keep_versions=self.serve.keep_versions)
        self.catalog = CatalogFollower(settings, self.recommender, self.metrics, self.encoder)
        # What keeps profiles current: the workers' serving profiles (reads grow with the
        # users whose profiles change) or every event (reads grow with all traffic).
        self.feedback: ProfileFollower | FeedbackFollower = (
            ProfileFollower if self.serve.profiles == "topic" else FeedbackFollower)(
                settings, self.recommender, self.metrics)
        self.erasure = ErasureFollower(settings, self.recommender, self.metrics)
        self.feedback.erasures = self.erasure.erasures
        self.recommender.kept = self.policies.kept
        self.experiments = ExperimentControl(self.recommender, self.metrics)
        configured = experiment_from_settings(settings.experiment)
        if configured is not None:  # version 1 everywhere; the topic's later versions win
            self.experiments.adopt(configured)
        self.experiment_follower = ExperimentFollower(settings, self.experiments, self.metrics)
        self.ctx = self._context()
        self.app = create_app(self.ctx)

    def _context(self) -> ServeContext:
        return ServeContext(recommender=self.recommender, settings=self.serve,
                            metrics=self.metrics, event_log=None, codec=self.codec,
                            default_k=min(self.settings.bandit.slate_size, self.serve.max_k),
                            ready=self.readiness, reload=self.policies.request_reload,
                            pin=self.policies.pin, health=self.health,
                            edge=Pseudonymizer.from_settings(self.settings.privacy),
                            forget=self.erasure.forget, experiments=self.experiments)

    def start(self) -> ServeRuntime:
        s = self.settings
        ensure_topics(s)
        # Impressions are logged off the request path, so they can wait for big batches:
        # fewer, larger produce requests measured ~1.5x the max request rate of linger 5 ms.
        # A bounded delivery timeout makes a broker outage a failed send (not ready) within
        # seconds. Not idempotent: the worker drops repeated event ids anyway, and an
        # idempotent producer whose broker lost its producer ids (a restart of the embedded
        # broker) fails every later send for good.
        timeout_ms, linger_ms = self.serve.produce_timeout_ms, 100
        self.producer = KafkaProducer(bootstrap_servers=s.kafka.bootstrap, acks="all",
                                      linger_ms=linger_ms, batch_size=512 * 1024,
                                      client_id=f"{s.kafka.client_id}-serve",
                                      enable_idempotence=False,
                                      delivery_timeout_ms=timeout_ms,
                                      # kafka-python: delivery > linger + request
                                      request_timeout_ms=min(30_000, timeout_ms // 2),
                                      max_block_ms=timeout_ms)
        self.event_log = EventLog(kafka_send(self.producer, self.metrics, self.health),
                                  s.topics.events, capacity=self.serve.log_queue_size,
                                  metrics=self.metrics, codec=self.codec).start()
        self.recommender.impressions = self.event_log.log_impression
        self.ctx.event_log = self.event_log
        self.erasure.producer = self.producer
        self.experiments.publish = kafka_publisher(self.producer, s.topics.experiments,
                                                   timeout_s=timeout_ms / 1000)
        for follower in self._followers:
            follower.start()
        return self

    @property
    def _followers(self) -> tuple[Any, ...]:
        return (self.erasure, self.feedback, self.catalog, self.policies,
                self.experiment_follower)

    def readiness(self) -> dict[str, Any]:
        rec = self.recommender
        errors = {f.name: repr(f.error) for f in self._followers if f.error is not None}
        if not self.health.producing:
            errors["events_producer"] = self.health.reason
        state = {
            "ready": (rec.ready and self.catalog.caught_up.is_set()
                      and self.feedback.caught_up.is_set()
                      and self.experiment_follower.caught_up.is_set() and not errors),
            "policy_version": rec.bundle.version if rec.bundle else None,
            "catalog_items": rec.catalog_size,
            "catalog_loaded": self.catalog.caught_up.is_set(),
            "feedback_following": self.feedback.caught_up.is_set(),
            "producing": self.health.producing,
        }
        if errors:
            state["errors"] = errors
        return state

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.readiness()["ready"]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not ready after {timeout_s}s: {self.readiness()}")
            time.sleep(0.05)
        # The model, catalog and policy are loaded and live for good: keep the collector
        # from rescanning them on every request burst (shorter, rarer GC pauses).
        gc.freeze()

    def close(self) -> None:
        for follower in self._followers:
            follower.stop()
        if self.event_log is not None:
            self.event_log.close()
        if self.producer is not None:
            self.producer.flush(timeout=10)
            self.producer.close()
            self.producer = None


def _announce(server: uvicorn.Server, host: str, port: int, settings: Settings) -> None:
    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.01)
    print(f"fairstream: serving on http://{host}:{port} (policies from "
          f"{settings.topics.policies}, group {settings.kafka.group_id})", flush=True)


def _freeze_when_ready(runtime: ServeRuntime) -> None:
    try:
        runtime.wait_ready(timeout_s=3600.0)
    except TimeoutError:
        log.warning("not ready after an hour; see /readyz")


class _Server(uvicorn.Server):
    """uvicorn.Server whose signal handling is ours: uvicorn's re-raises the signal after
    a graceful shutdown, which would end the process with a signal instead of exit 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _config(app: Any, host: str, port: int) -> uvicorn.Config:
    # No access log (a log line per request costs more than the scoring); uvloop and
    # httptools (dependencies), the latter with a deadline on each request's head
    # (stream.serve.protocol), read from the app's own limits; one worker process: the
    # followers live in it.
    ctx = getattr(app, "ctx", None)  # create_app's: its ServeSettings and metrics
    limits = ctx.settings if ctx is not None else ServeSettings()
    counted = (ctx.metrics.invalid_requests.labels(reason=HEAD_TIMEOUT).inc
               if ctx is not None and ctx.metrics is not None else None)
    return uvicorn.Config(app, host=host, port=port, access_log=False, log_level="warning",
                          lifespan="off", timeout_graceful_shutdown=10,
                          http=head_deadline_protocol(limits.header_timeout_s, counted))


class ServerThread:
    """Run a :class:`ServeRuntime` under uvicorn in a background thread (tests, bench, demo).

    >>> from stream.serve.app import ServeContext, create_app
    >>> from stream.serve.recommender import Recommender
    >>> import httpx
    >>> with ServerThread(create_app(ServeContext(Recommender()))) as srv:
    ...     httpx.get(f"{srv.url}/healthz").json()
    {'status': 'ok'}
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        from stream.kafka.broker import free_port

        self.host = host
        self.port = port or free_port()
        self.server = _Server(_config(app, host, self.port))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> ServerThread:
        self._thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_server(settings: Settings, host: str | None = None, port: int | None = None,
               serve: ServeSettings | None = None) -> int:
    """``fairstream serve``: block until SIGTERM/SIGINT, shut down gracefully, return 0.

    ``host``/``port`` default to ``serve.host``/``serve.port``. Refuses the built-in
    signing and pseudonym keys (ConfigError).
    """
    refuse_dev_key(settings, "fairstream serve", edge=True)
    serve = serve or settings.serve
    host = serve.host if host is None else host
    port = serve.port if port is None else port
    runtime = ServeRuntime(settings, serve)
    server = _Server(_config(runtime.app, host, port))

    def _stop(signum: int, _frame: object) -> None:
        log.info("signal %d: shutting down", signum)
        if server.should_exit:
            server.force_exit = True
        server.should_exit = True

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        runtime.start()
        # /readyz answers from the start; this only freezes the GC once the server is ready.
        threading.Thread(target=_freeze_when_ready, args=(runtime,), daemon=True,
                         name="serve-freeze-when-ready").start()
        # Announced once uvicorn listens: a port it cannot bind never reads as "serving".
        threading.Thread(target=_announce, args=(server, host, port, settings), daemon=True,
                         name="serve-announce").start()
        server.run()  # on the loop uvicorn's config picks (uvloop), like ServerThread
    finally:
        runtime.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("fairstream: server stopped", flush=True)
    return 0
