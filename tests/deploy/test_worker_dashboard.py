"""A real Prometheus scrapes a real worker learning a MovieLens replay on the session
broker, and a real server answering requests with the worker's published policy: every
dashboard panel must return data, and the events, reward-per-group and exposure-share
series must carry the right values."""

from __future__ import annotations

import time

import httpx
import pytest
from promserver import RULE_FILES, PrometheusServer, dashboard_queries

from stream.events import Click, EventCodec
from stream.kafka.producers import (
    catalog_items,
    make_producer,
    publish_catalog,
    publish_events,
    replay_events,
)
from stream.kafka.topics import ensure_topics
from stream.privacy import Pseudonymizer
from stream.serve import ServerThread, ServeRuntime
from stream.sim.demo import MALFORMED
from stream.worker import Worker, WorkerThread

pytestmark = [pytest.mark.prometheus, pytest.mark.broker, pytest.mark.model]


def _drive_server(url: str, items) -> tuple[int, int]:
    """Real traffic for the serve panels: recommendations, feedback and a bad request.
    Returns (recommendations answered, clicks forwarded)."""
    ids = [item.item_id for item in items[:200]]
    with httpx.Client(base_url=url, timeout=10) as client:
        for n in range(60):
            r = client.post("/recommend", json={"user_id": f"u{n % 7}", "k": 5,
                                                "user": {"gender": "MF"[n % 2], "age": 30},
                                                "candidates": ids[n:n + 40]})
            assert r.status_code == 200, r.text
            if n % 10 == 0:
                item = r.json()["items"][0]
                assert client.post("/feedback", json={"type": "click", "user_id": f"u{n % 7}",
                                                      "item_id": item,
                                                      "request_id": r.json()["request_id"]}
                                   ).status_code < 300
        assert client.post("/recommend", json={"user_id": "u", "k": 0}).status_code == 400
    return 60, 6


def _advance_watermarks(settings) -> int:
    edge = Pseudonymizer.from_settings(settings.privacy)
    codec = EventCodec()
    producer = make_producer(settings)
    at = time.time() + 2 * settings.events.attribution_window_s
    n = settings.kafka.events_partitions
    for p in range(n):
        event = edge.event(Click(event_id=f"tick-{p}", request_id=f"tick-{p}", ts=at,
                                 user_id=f"tick-{p}", item_id="1"))
        producer.send(settings.topics.events, key=event.user_id.encode(),
                      value=codec.encode(event), partition=p)
    producer.flush()
    producer.close()
    return n


def test_dashboard_panels_and_group_series_on_a_scraped_worker(make_settings, movielens,
                                                               encoder):
    # An online experiment splits the server's users (u0, u1, u3 get "wide" under this
    # name and the test pseudonym key; the others control), so its panels have data.
    settings = make_settings(finetune={"enabled": True, "every_updates": 400, "min_rows": 300,
                                       "steps": 30, "duty_cycle": 1.0},
                             events={"attribution_window_s": 60.0},
                             experiment={"name": "dashboard", "min_users": 2,
                                         "results_every_s": 0.5,
                                         "arms": [{"name": "control", "share": 0.5},
                                                  {"name": "wide", "share": 0.5,
                                                   "alpha": 2.0}]})
    ensure_topics(settings)
    publish_catalog(settings, catalog_items(movielens))
    events = list(replay_events(movielens, limit=1200))
    duplicate = next(e for e in events if isinstance(e, Click))
    publish_events(settings, iter([*events, duplicate]), progress=False)
    producer = make_producer(settings)
    for value in MALFORMED.values():
        producer.send(settings.topics.events, key=b"bad", value=value)
    producer.flush()
    producer.close()

    worker = Worker(settings, encoder=encoder)
    port = worker.serve_metrics()
    running = WorkerThread(worker)
    total = len(events) + 1 + len(MALFORMED)
    registry = worker.metrics.registry
    runtime = ServeRuntime(settings, encoder=encoder)
    server = ServerThread(runtime.app)
    # Prometheus scrapes from the start, so every rate() sees the counters grow: the worker
    # starts only once a scrape of its zeroed histogram is in (it can learn the whole
    # replay within Prometheus' start-up, and a histogram that never grows inside the
    # window has no quantile).
    with server, PrometheusServer([f"127.0.0.1:{port}", f"127.0.0.1:{server.port}"],
                                  rule_files=RULE_FILES, scrape_interval="1s") as prom:
        prom.wait_for("fairstream_bandit_update_duration_seconds_count",
                      lambda s: len(s) == 1 and s[0].value == 0, timeout=30)
        running.start(timeout_s=120)
        runtime.start()
        try:
            runtime.wait_ready(60)
            served, clicks = _drive_server(server.url, catalog_items(movielens))
            total += served + clicks  # the server logs its impressions and forwards feedback
            # Once Kafka holds the served impressions and clicks, one click past their
            # window on every partition closes them, so the experiment's arms get results
            # (the ticks themselves join nothing: "unknown_request").
            served_metrics = runtime.metrics.registry
            deadline = time.monotonic() + 60
            while (served_metrics.get_sample_value("fairstream_serve_impressions_logged_total")
                   or 0) < served or (served_metrics.get_sample_value(
                       "fairstream_serve_feedback_forwarded_total", {"type": "click"}) or 0) \
                    < clicks:
                assert time.monotonic() < deadline, "served events not acknowledged"
                time.sleep(0.05)
            total += _advance_watermarks(settings)
            deadline = time.monotonic() + 120
            finetunes = worker.metrics.finetunes
            while worker.report.events < total or (
                    finetunes.labels(outcome="swapped")._value.get()
                    + finetunes.labels(outcome="rejected")._value.get()) < 1:
                assert time.monotonic() < deadline and running.is_alive(), worker.report
                time.sleep(0.1)
            # The worker is caught up, so its counters are final: wait for a scrape of them.
            n_imp = sum(1 for e in events if not isinstance(e, Click)) + served
            prom.wait_for('fairstream_events_consumed_total{type="impression"}',
                          lambda s: s and s[0].value == n_imp, timeout=30)

            def final(family, *labels):
                return lambda samples: samples and all(
                    s.value == registry.get_sample_value(
                        family, {label: s.labels[label] for label in labels})
                    for s in samples)

            rewards = prom.wait_for("fairstream_rewards_sum_total",
                                    final("fairstream_rewards_sum_total", "user_group",
                                          "source"))
            assert sum(s.value for s in rewards if s.labels["user_group"].startswith("gender"))\
                > 0
            # Enough scrapes for every rate() window to hold two samples.
            prom.wait_for("count_over_time(fairstream_events_consumed_total"
                          '{type="impression"}[1m])', lambda s: s and s[0].value >= 3)
            joined = {s.labels["user_group"]: s.value
                      for s in prom.query("fairstream_rewards_joined_total")}
            assert {"gender=F", "gender=M"} <= joined.keys()
            exposure = {s.labels["item_group"]: s.value for s in prom.wait_for(
                "fairstream_exposure_total", final("fairstream_exposure_total", "item_group"))}
            assert exposure.keys() == {"head", "tail"}
            assert min(exposure.values()) > 0
            rejected = {s.labels["reason"]: s.value
                        for s in prom.query("fairstream_events_rejected_total")}
            assert rejected == {**dict.fromkeys(MALFORMED, 1.0), "oversize": 0.0, "clock_skew": 0.0}

            # Every panel has data, and not only NaN (an empty rate window): a scrape or two
            # may still be due.
            for _title, expr in dashboard_queries():
                prom.wait_for(expr, lambda s: any(x.value == x.value for x in s), timeout=15)
            # The recording rules evaluate on the live data too.
            share = prom.wait_for("job_item_group:fairstream_exposure_share:ratio_rate5m",
                                  lambda s: s and all(x.value == x.value for x in s), timeout=30)
            assert sum(s.value for s in share) == pytest.approx(1.0)
        finally:
            runtime.close()
            running.stop(timeout_s=60)
