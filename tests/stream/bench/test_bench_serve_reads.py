"""run_serve_reads_bench end to end with tiny numbers: its keys and the counts that do not
depend on timing (an events-mode server reads every event; a topic-mode server reads at
least one profile per user who clicked, and at most one per click)."""

from __future__ import annotations

import pytest

from stream.bench.serve_reads import run_serve_reads_bench

pytestmark = [pytest.mark.broker, pytest.mark.model]


def test_serve_reads_bench_counts(make_settings, broker, encoder):
    users, clicks = 30, 2
    result = run_serve_reads_bench(make_settings(), bootstrap=broker.bootstrap, users=users,
                                   impressions=3, clicks=clicks, factors=(1, 3),
                                   encoder=encoder, progress=False)
    for factor, impressions in ((1, 3), (3, 9)):
        phase = result["phases"][f"x{factor}"]
        assert phase["events_produced"] == users * (impressions + clicks)
        assert phase["events_produced"] == result[f"events_records_read_x{factor}"]
        assert users <= result[f"topic_records_read_x{factor}"] <= users * clicks
        assert phase["broker_cpu_s"] is None  # not the bench's broker: not measured
        assert phase["worker_serving_s"] > 0  # it wrote profiles in every phase
        for mode in ("topic", "events"):
            assert phase[mode]["rss_mb"] > 0 and phase[mode]["bytes_read"] > 0
