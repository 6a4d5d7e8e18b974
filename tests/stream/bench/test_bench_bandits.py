"""`fairstream bench bandits` reports every key the README and issue name, on a small run."""

from __future__ import annotations

from stream.bench.bandits import run_bandits_bench


def test_bench_bandits_reports_every_figure_beside_its_baseline():
    out = run_bandits_bench(dims=(8,), n_candidates=10, hybrid_items=(200,), seed=0)
    d8 = out["d8"]
    for key in ("update_us_p50", "batch_updates_per_s", "score100_us_p50", "score100_us_p99",
                "naive_update_us_p50", "naive_score100_us_p99"):
        assert d8[key] > 0, key
    assert d8["score100_us_p50"] <= d8["score100_us_p99"]
    hybrid = out["hybrid"]["200"]
    for key in ("bytes_per_item", "score100_us_p50", "score100_us_p99",
                "serving_score100_us_p50", "serving_score100_us_p99", "fill_rows_per_s"):
        assert hybrid[key] > 0, key
