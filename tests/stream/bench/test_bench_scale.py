"""run_scale_bench end to end with tiny numbers, on the session broker: the issue's JSON
keys and their shapes, no timing asserts (speed lives in the bench's own output)."""

from __future__ import annotations

import json
import math

import pytest

from stream.bench.scale import run_scale_bench

pytestmark = [pytest.mark.broker, pytest.mark.model]


def test_scale_bench_reports_its_keys(make_settings, broker, tmp_path):
    path = tmp_path / "scale.json"
    result = run_scale_bench(make_settings(kafka={"events_partitions": 4}),
                             ratings=1500, users=(1000, 3000), workers=(2,),
                             out_dir=tmp_path / "out", json_path=path, progress=False,
                             bootstrap=broker.bootstrap, restore_users=3000,
                             overhead_ratings=1500, overhead_repeats=1)
    assert json.loads(path.read_text()) == json.loads(json.dumps(result))
    assert set(result["events_per_s_by_workers"]) == {"2"}
    assert all(v > 0 for v in result["events_per_s_by_workers"].values())
    # Per-process CPU in each window: every learner and its fetch process (a window this
    # short may span no clock tick of a process: counted, maybe 0).
    for n, cpu in result["cpu_by_workers"].items():
        for i in range(int(n)):
            assert cpu[f"worker-{i}"]["cpu_s"] >= 0 and cpu[f"worker-{i}-fetch"]["cpu_s"] >= 0
    assert set(result["checkpoint_s_by_users"]) == {"1000", "3000"}
    assert all(v > 0 for v in result["checkpoint_s_by_users"].values())
    assert result["restore_profiles"] == 3000 and result["restore_profiles_per_s"] > 0
    # The overhead: one on/off pair here (the median of one).
    runs = result["stats_overhead_pct_runs"]
    assert len(runs) == 1 and all(math.isfinite(x) for x in runs)
    assert result["stats_overhead_pct"] == runs[0]
    assert len(result["events_per_s_one_worker_runs"]["exchange_off"]) == 1
