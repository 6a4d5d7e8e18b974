"""run_serve_bench end to end with tiny numbers: the keys only, no timing asserts."""

from __future__ import annotations

import math

import pytest

from stream.bench.serve import run_serve_bench

pytestmark = [pytest.mark.broker, pytest.mark.model]


def test_serve_bench_reports_its_keys(make_settings, broker, encoder):
    result = run_serve_bench(make_settings(), bootstrap=broker.bootstrap, requests=60,
                             duration_s=1.0, rate=100.0, n_candidates=100, connections=2,
                             warmup=20, n_items=300, encoder=encoder, progress=False)
    for key in ("rps_max", "p50_ms_at_200rps", "p99_ms_at_200rps"):
        assert math.isfinite(result[key]) and result[key] > 0
    assert result["max"]["errors"] == 0 and result["paced"]["errors"] == 0
    assert result["n_candidates"] == 100 and result["dim"] == 64
    # Shares of the CPU time the kernel counted in each window. A phase this short can
    # span only a few clock ticks, all of them idle: busy may be 0, so only the shares
    # are checked (a busy > 0 here once failed on a fresh clone).
    for host in (result["host_cpu"], result["max"]["host_cpu"], result["paced"]["host_cpu"]):
        assert 0 <= host["busy"] <= 1 and 0 <= host["steal"] < 1
        assert math.isclose(host["busy"] + host["idle"] + host["steal"], 1.0)
