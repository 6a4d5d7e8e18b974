import math

import pytest

from stream.bench.learners import run_learners_bench

pytestmark = pytest.mark.model

KEYS = {"embed_items_per_s_cold", "embed_items_per_s_cached", "finetune_samples_per_s",
        "finetune_steps_per_s", "consumer_throughput_loss_pct", "device"}


def test_bench_tiny(encoder):
    out = run_learners_bench(n_items=24, device="cpu", progress=False, consumer_seconds=0.3,
                             finetune_steps=5, batch_size=32, encoder=encoder)
    assert set(out) >= KEYS
    assert out["device"] == "cpu"
    for k in KEYS - {"device", "consumer_throughput_loss_pct"}:
        assert math.isfinite(out[k]) and out[k] > 0, k
    assert out["embed_items_per_s_cached"] > out["embed_items_per_s_cold"]
    assert -100 < out["consumer_throughput_loss_pct"] < 100
    assert out["phi_us_per_call"] > 0
