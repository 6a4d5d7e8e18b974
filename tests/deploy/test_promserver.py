"""A real Prometheus scrapes tiny prometheus_client targets; rules and panels run on it."""

from __future__ import annotations

import math
import time

import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from promserver import RULE_FILES, PrometheusServer, dashboard_queries, free_port, rule_expressions

from stream.events import REASONS
from stream.metrics import Metrics

pytestmark = pytest.mark.prometheus


class TickingCollector:
    """Counters that all grow in step with one tick count n (10 ticks/s).

    Every family is read from the same n in one collect(), so ratios of their
    rates are exact whatever the scrape timing: reward rate F = n/4n, M = n/2n,
    exposure share head = 3n/4n, DLQ share = n/(n+10n), p99 inside (0.05, 0.1].
    """

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def collect(self):
        n = int((time.monotonic() - self.t0) * 10) + 1
        consumed = CounterMetricFamily("fairstream_events_consumed", "", labels=["type"])
        consumed.add_metric(["impression"], 8 * n)
        consumed.add_metric(["click"], 2 * n)
        rejected = CounterMetricFamily("fairstream_events_rejected", "", labels=["reason"])
        rejected.add_metric(["undecodable"], n)
        joined = CounterMetricFamily("fairstream_rewards_joined", "", labels=["user_group"])
        joined.add_metric(["gender=F"], 4 * n)
        joined.add_metric(["gender=M"], 2 * n)
        rewards = CounterMetricFamily("fairstream_rewards_sum", "", labels=["user_group"])
        rewards.add_metric(["gender=F"], n)
        rewards.add_metric(["gender=M"], n)
        exposure = CounterMetricFamily("fairstream_exposure", "", labels=["item_group"])
        exposure.add_metric(["head"], 3 * n)
        exposure.add_metric(["tail"], n)
        serve = HistogramMetricFamily(
            "fairstream_serve_request_duration_seconds", "", labels=["endpoint"]
        )
        serve.add_metric(["/recommend"], [("0.05", 0), ("0.1", n), ("+Inf", n)], sum_value=0.07 * n)
        yield from (consumed, rejected, joined, rewards, exposure, serve)


@pytest.fixture(scope="module")
def targets():
    """Two scrape targets: the project's Metrics with fixed values, and ticking counters."""
    metrics = Metrics()
    metrics.policy_version.set(3)
    metrics.catalog_items.set(1682)
    metrics.consumer_lag.labels(partition="0").set(7)
    metrics.consumer_lag.labels(partition="1").set(3)
    metrics.events_duplicate.inc(5)
    ticking = CollectorRegistry()
    ticking.register(TickingCollector())
    servers, addresses = [], []
    for registry in (metrics.registry, ticking):
        port = free_port()
        server, _thread = start_http_server(port, addr="127.0.0.1", registry=registry)
        servers.append(server)
        addresses.append(f"127.0.0.1:{port}")
    yield addresses
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def prom(targets):
    with PrometheusServer(targets, rule_files=RULE_FILES, scrape_interval="1s") as server:
        server.wait_for(
            'up{job="fairstream-worker"}', lambda s: len(s) == 2 and all(x.value == 1 for x in s)
        )
        yield server


def by(samples, label):
    return {s.labels.get(label, ""): s.value for s in samples}


def test_scraped_values(prom, targets):
    assert prom.query("fairstream_policy_version")[0].value == 3
    assert prom.query("fairstream_catalog_items")[0].value == 1682
    assert prom.query("fairstream_events_duplicate_total")[0].value == 5
    assert by(prom.query("fairstream_consumer_lag_messages"), "partition") == {"0": 7, "1": 3}
    assert set(prom.targets_health().values()) == {"up"}
    assert {s.labels["instance"] for s in prom.query("up")} == set(targets)


def test_query_errors_are_reported(prom):
    from promserver import PrometheusError

    with pytest.raises(PrometheusError, match="parse"):
        prom.query("sum(")


def test_all_rules_load_healthy(prom):
    names = {name for name, _ in rule_expressions()}
    rules = prom.rules()
    assert {r["name"] for r in rules} == names
    assert all(r["health"] in ("ok", "unknown") for r in rules), rules


def _wait_rule(prom, promql, n):
    return prom.wait_for(promql, lambda s: len(s) == n and not any(math.isnan(x.value) for x in s))


def test_recording_rules_on_real_prometheus(prom):
    # Metrics() declares every event type and rejection reason at 0 from the start. Both
    # targets export these counters, so the rule can first be evaluated while only the
    # constant target has two samples in the window (a rate of 0): wait for the ticking
    # one to count too.
    consumed = prom.wait_for(
        "job_type:fairstream_events_consumed:rate1m",
        lambda s: len(s) == 3 and not any(math.isnan(x.value) for x in s)
        and by(s, "type")["impression"] > 0)
    rates = by(consumed, "type")
    assert rates["purchase"] == 0
    assert rates["impression"] == pytest.approx(4 * rates["click"])
    assert 0 < rates["impression"] <= 80 * 1.2  # at most the true 80/s (window not yet full)
    (total,) = _wait_rule(prom, "job:fairstream_events_consumed:rate1m", 1)
    assert total.labels["job"] == "fairstream-worker" and total.value > 0

    reward = by(
        _wait_rule(prom, "job_user_group:fairstream_reward_rate:ratio_rate5m", 2), "user_group"
    )
    assert reward == pytest.approx({"gender=F": 0.25, "gender=M": 0.5})

    share = by(
        _wait_rule(prom, "job_item_group:fairstream_exposure_share:ratio_rate5m", 2), "item_group"
    )
    assert share == pytest.approx({"head": 0.75, "tail": 0.25})

    (dlq,) = _wait_rule(prom, "job:fairstream_events_rejected:ratio_rate5m", 1)
    assert dlq.value == pytest.approx(1 / 11)
    reasons = by(_wait_rule(prom, "job_reason:fairstream_events_rejected:rate5m", len(REASONS)),
                 "reason")
    assert {r for r, v in reasons.items() if v > 0} == {"undecodable"}

    (lag,) = _wait_rule(prom, "job:fairstream_consumer_lag_messages:sum", 1)
    assert lag.value == 10

    (p99,) = _wait_rule(
        prom, "job_endpoint:fairstream_serve_request_duration_seconds:p99_rate5m", 1
    )
    assert p99.labels["endpoint"] == "/recommend"
    assert p99.value == pytest.approx(0.05 + 0.05 * 0.99)


def test_every_dashboard_and_rule_expression_evaluates(prom):
    for _title, expr in dashboard_queries() + rule_expressions():
        prom.query(expr)  # raises PrometheusError on a PromQL error
    assert by(prom.query(dict(dashboard_queries())["Policy version"]), "") == {"": 3}


def test_server_stops_cleanly(targets):
    server = PrometheusServer(targets[:1])
    with server:
        url = server.url
        proc = server._proc
        assert "running" in repr(server)
    assert proc.returncode == 0
    assert server.port is None and "stopped" in repr(server)
    import urllib.request

    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/-/ready", timeout=1)
