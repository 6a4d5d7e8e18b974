"""Every metric a rule or panel reads is one stream/metrics.py defines (or is coming soon)."""

from __future__ import annotations

import ast
import re

import pytest
from promserver import REPO_ROOT, RULE_FILES, dashboard_queries, metric_names, rule_expressions

METRICS_PY = REPO_ROOT / "stream" / "metrics.py"

# Metrics announced but not yet in stream/metrics.py: (name, type). Remove an entry
# once the metric is defined there.
COMING_SOON: dict[str, str] = {}

_KINDS = {"Counter": "counter", "Gauge": "gauge", "OptionalGauge": "gauge",
          "Histogram": "histogram", "Summary": "summary"}


def defined_metrics() -> dict[str, str]:
    """``{name: type}`` of the metric families constructed in stream/metrics.py."""
    found = {}
    for node in ast.walk(ast.parse(METRICS_PY.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _KINDS
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found[node.args[0].value] = _KINDS[node.func.id]
    return found


def exposed_series(families: dict[str, str]) -> set[str]:
    """Series names Prometheus stores for these families."""
    names = set()
    for name, kind in families.items():
        if kind in ("histogram", "summary"):
            names |= {f"{name}_sum", f"{name}_count", f"{name}_created"}
            if kind == "histogram":
                names.add(f"{name}_bucket")
            if kind == "summary":
                names.add(name)
        elif kind == "counter":
            base = name.removesuffix("_total")
            names |= {f"{base}_total", f"{base}_created"}
        else:
            names.add(name)
    return names


def recorded_names() -> set[str]:
    import yaml

    names = set()
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            names |= {r["record"] for r in group["rules"] if "record" in r}
    return names


def test_metrics_py_parses_to_the_documented_families():
    defined = defined_metrics()
    assert defined["fairstream_events_consumed_total"] == "counter"
    assert defined["fairstream_bandit_update_duration_seconds"] == "histogram"
    assert defined["fairstream_consumer_lag_messages"] == "gauge"
    assert len(defined) >= 14


@pytest.mark.parametrize("name,kind", sorted({**COMING_SOON, **defined_metrics()}.items()))
def test_metric_names_follow_conventions(name, kind):
    assert re.fullmatch(r"fairstream_[a-z][a-z0-9_]*[a-z0-9]", name), name
    if kind == "counter":
        assert name.endswith("_total"), f"counter {name} must end in _total"
    else:
        assert not name.endswith("_total"), f"only counters end in _total: {name}"
    if kind == "histogram" and "duration" in name:
        assert name.endswith("_seconds"), f"durations are _seconds histograms: {name}"


def _referenced() -> list[tuple[str, str, str]]:
    out = []
    for where, exprs in (("rule", rule_expressions()), ("panel", dashboard_queries())):
        for title, expr in exprs:
            out += [(where, title, name) for name in sorted(metric_names(expr))]
    return out


def test_every_referenced_metric_is_defined_or_coming_soon():
    known = exposed_series(defined_metrics()) | exposed_series(COMING_SOON)
    recorded = recorded_names()
    unknown = [
        f"{where} {title!r}: {name}"
        for where, title, name in _referenced()
        if name not in (recorded if ":" in name else known)
    ]
    assert not unknown, "metrics not in stream/metrics.py nor COMING_SOON:\n" + "\n".join(unknown)


def test_the_check_catches_a_misspelt_metric():
    known = exposed_series(defined_metrics())
    assert "fairstream_event_consumed_total" not in known
    assert metric_names("rate(fairstream_event_consumed_total[1m])") == {
        "fairstream_event_consumed_total"
    }


def test_coming_soon_does_not_shadow_a_defined_metric_of_another_type():
    defined = defined_metrics()
    clashes = {
        n: (k, defined[n]) for n, k in COMING_SOON.items() if n in defined and defined[n] != k
    }
    assert not clashes, clashes
