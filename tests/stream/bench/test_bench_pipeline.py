"""A tiny pipeline benchmark on the session broker: keys and sanity, no timing assertions."""

from __future__ import annotations

import json
import math

import pytest

from stream.bench.pipeline import run_pipeline_bench

pytestmark = [pytest.mark.broker, pytest.mark.model]

KEYS = {"learn_events_per_s", "raw_consume_events_per_s", "vw_learn_events_per_s",
        "latency_p50_s", "latency_p99_s"}


def test_tiny_pipeline_bench(make_settings, broker, encoder, tmp_path):
    json_path = tmp_path / "bench.json"
    result = run_pipeline_bench(make_settings(), events=300, out_dir=tmp_path / "out",
                                json_path=json_path, progress=False,
                                bootstrap=broker.bootstrap, encoder=encoder, live_events=60,
                                live_rate=200.0)
    assert set(result) >= KEYS
    for key in ("learn_events_per_s", "raw_consume_events_per_s", "vw_learn_events_per_s"):
        assert result[key] > 0 and math.isfinite(result[key]), key
    assert 0 <= result["latency_p50_s"] <= result["latency_p99_s"] < 60
    d = result["details"]
    assert d["records"] > 300  # one impression per rating plus its clicks
    assert d["raw_consume"]["before"]["records"] == d["records"]
    assert d["rows_learned"] > 0
    host = result["host_cpu_while_learning"]  # shares of the machine's CPU time (Linux)
    assert host["busy"] > 0 and 0 <= host["steal"] < 1
    assert abs(host["busy"] + host["idle"] + host["steal"] - 1) < 1e-9
    assert d["worker_report"]["rejected"] == 0
    assert d["live"]["impressions_learned"] > 0 and d["live"]["samples"] > 0
    assert json.loads(json_path.read_text()) == json.loads(
        (tmp_path / "out" / "results.json").read_text())
