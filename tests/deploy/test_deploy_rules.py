"""Prometheus config and rules: promtool check/test, annotations, test coverage."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml
from promserver import DEPLOY, REPO_ROOT, RULE_FILES, RULE_TESTS, require_binary

README = DEPLOY / "README.md"


def _rules(kind: str) -> list[dict]:
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if kind in rule
    ]


ALERTS = _rules("alert")
RECORDS = _rules("record")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = require_binary("promtool")
    return subprocess.run(
        [promtool, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )


def test_rule_files_exist():
    assert {p.name for p in RULE_FILES} >= {"recording.yml", "alerts.yml"}
    assert RULE_TESTS, "no promtool unit tests in deploy/prometheus/tests"


def test_promtool_check_rules():
    result = _promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config():
    result = _promtool("check", "config", "--syntax-only", "deploy/prometheus/prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", RULE_TESTS, ids=lambda p: p.name)
def test_promtool_test_rules(path):
    result = _promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_expected_alerts_exist():
    names = {a["alert"] for a in ALERTS}
    assert names >= {
        "FairstreamConsumerLagGrowing",
        "FairstreamPolicyNotPublished",
        "FairstreamDLQRateHigh",
        "FairstreamFairnessDisparityAboveTarget",
        "FairstreamFinetuneFailing",
        "FairstreamServeLatencyHigh",
        "FairstreamFeedbackUnjoined",
        "FairstreamExperimentGuardrailBreached",
    }


@pytest.mark.parametrize("alert", ALERTS, ids=lambda a: a["alert"])
def test_alert_has_annotations_and_runbook(alert):
    annotations = alert.get("annotations", {})
    assert {"summary", "description", "runbook_url"} <= annotations.keys()
    assert alert.get("labels", {}).get("severity") in {"warning", "critical"}
    path, _, anchor = annotations["runbook_url"].partition("#")
    assert path == "deploy/README.md" and anchor == alert["alert"].lower()
    headings = re.findall(r"^#+\s+(.+?)\s*$", README.read_text(), flags=re.M)
    slugs = {re.sub(r"[^a-z0-9 _-]", "", h.lower()).replace(" ", "-") for h in headings}
    assert anchor in slugs, f"deploy/README.md has no heading for {alert['alert']}"


def _unit_tests() -> list[dict]:
    return [t for path in RULE_TESTS for t in yaml.safe_load(path.read_text())["tests"]]


@pytest.mark.parametrize("alert", [a["alert"] for a in ALERTS])
def test_each_alert_is_unit_tested_firing_and_not_firing(alert):
    cases = [
        c for t in _unit_tests() for c in t.get("alert_rule_test", []) if c["alertname"] == alert
    ]
    assert any(c.get("exp_alerts") for c in cases), f"{alert}: no test where it fires"
    assert any(not c.get("exp_alerts") for c in cases), f"{alert}: no test where it stays quiet"


@pytest.mark.parametrize("record", [r["record"] for r in RECORDS])
def test_each_recording_rule_value_is_unit_tested(record):
    cases = [c for t in _unit_tests() for c in t.get("promql_expr_test", [])]
    assert any(c["expr"].strip() == record and c.get("exp_samples") for c in cases), record
