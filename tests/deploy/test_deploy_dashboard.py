"""The Grafana dashboard and its provisioning."""

from __future__ import annotations

import json

import yaml
from promserver import DASHBOARD, DEPLOY, dashboard_queries

DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _datasource_uid() -> str:
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert source["type"] == "prometheus"
    return source["uid"]


def test_dashboard_has_fixed_uid_and_no_variables():
    dash = _dashboard()
    assert dash["uid"] == "fairstream-overview"
    assert dash["templating"]["list"] == []


def test_every_panel_queries_the_provisioned_datasource():
    uid = _datasource_uid()
    panels = [p for p in _dashboard()["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in _dashboard()["panels"]}) == len(_dashboard()["panels"])
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid and target["expr"].strip()


def test_dashboard_queries_lists_every_target():
    queries = dashboard_queries()
    n_targets = sum(len(p.get("targets", [])) for p in _dashboard()["panels"])
    assert len(queries) == n_targets
    assert all(title and expr for title, expr in queries)


def test_required_views_are_on_the_dashboard():
    exprs = "\n".join(expr for _, expr in dashboard_queries())
    required = [
        "rate(fairstream_events_consumed_total",  # throughput
        "fairstream_consumer_lag_messages",  # lag
        "histogram_quantile(0.99, sum by (le) "
        "(rate(fairstream_bandit_update_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (endpoint, le) "
        "(rate(fairstream_serve_request_duration_seconds_bucket",
        "fairstream_policy_version",
        "fairstream_finetune_loss",
        "fairstream_finetune_duration_seconds_bucket",
        "sum by (user_group, source) (rate(fairstream_rewards_sum_total",  # reward per group
        "by (item_group) (rate(fairstream_exposure_total",  # exposure share
        "fairstream_fairness_exposure_disparity",
        "fairstream_fairness_disparity_target",
        "sum by (reason) (rate(fairstream_events_rejected_total",  # DLQ reasons
        # reward and CTR by who chose the slate, and feedback that joined nothing
        "sum by (source, policy_version) (rate(fairstream_policy_reward_sum_total",
        "sum by (source, policy_version) (rate(fairstream_policy_clicked_total",
        "sum by (reason) (rate(fairstream_feedback_unjoined_total",
        # what servers read to keep profiles current, and how far those profiles trail
        "sum by (instance, topic) (rate(fairstream_serve_follow_records_total",
        "fairstream_serve_profile_freshness_seconds_bucket",
    ]
    missing = [r for r in required if r not in exprs]
    assert not missing, missing


def test_dashboard_provider_is_file_based():
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "fairstream.yml").read_text()
    )
    (entry,) = provider["providers"]
    assert entry["type"] == "file" and entry["options"]["path"]
