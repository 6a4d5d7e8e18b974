"""Chaos: one replay with hostile messages of every shape interleaved, the worker process
SIGKILLed at chosen and random points, compared with one clean run (`fairstream chaos`
runs the same with more kills)."""

from __future__ import annotations

import numpy as np
import pytest

from stream.bench.chaos import ChaosPlan, run_chaos
from stream.bench.hostile import SHAPES, hostile_messages
from stream.events import EventCodec
from stream.exceptions import InvalidEvent


def test_every_hostile_shape_is_rejected_for_its_reason():
    """The reasons the chaos run expects on the DLQ are the codec's (the worker's catalog
    check gives unknown_item); no hostile message is ever a valid event."""
    codec = EventCodec(max_bytes=64 * 1024, max_slate=100, max_clock_skew_s=300.0)
    known = {str(i) for i in range(1, 1683)}
    rng = np.random.default_rng(0)
    for shape, (reason, make) in SHAPES.items():
        for i in range(4 if shape == "oversize_huge" else 200):
            with pytest.raises(InvalidEvent) as info:
                codec.decode(make(rng, i, codec.max_bytes), known_items=known)
            assert info.value.reason == reason, (shape, i)


def test_hostile_messages_mix_every_shape():
    msgs = hostile_messages(600, np.random.default_rng(1), 64 * 1024, huge=2)
    shapes = [s for s, _ in msgs]
    assert len(msgs) == 600 and set(shapes) == set(SHAPES)
    assert sum(1 for _, v in msgs if v is not None and len(v) > 1 << 20) == 2


@pytest.mark.broker
@pytest.mark.model
@pytest.mark.chaos
def test_sigkilled_again_and_again_under_hostile_input_ends_as_one_clean_run(
        make_settings, movielens, encoder, tmp_path):
    """Fewer kills than `fairstream chaos` (runtime): two after a checkpoint, one
    mid-batch, one right after a publish's version record, one during a fine-tune, two
    at random moments; 500 hostile messages of 15 shapes, two of them over 1 MiB."""
    plan = ChaosPlan(after_checkpoint=2, mid_batch=1, publish=1, finetune=1, random=2,
                     ratings=1200, hostile=500, interval=400, phase=60, seed=3)
    s = run_chaos(make_settings(), movielens, encoder, tmp_path, plan, log=print)
    print({k: v for k, v in s.items() if k != "kill_log"})
    assert s["kills"] == 7 and s["hostile"] == 500 and s["hostile_shapes"] == len(SHAPES)
    assert s["hostile_over_1mib"] == 2
    assert s["final_exit_code"] == 0
    assert s["checkpoint_covers"] == s["records"]
    assert s["n_updates"] == s["n_updates_clean"] > 0
    assert s["max_abs_diff_A"] <= 1e-9 and s["max_abs_diff_b"] <= 1e-9
    assert s["max_abs_diff_items"] <= 1e-9
    assert s["open_impressions"] == s["open_impressions_clean"]
    assert s["dlq_hostile_missing"] == 0, s["dlq_missing_by_shape"]
    assert s["dlq_hostile_wrong_reason"] == 0, s["dlq_wrong_reason_by_shape"]
    assert s["dlq_markers"] >= 2  # the values over 1 MiB, at least once each
    assert s["policy_versions_increasing"]
    assert s["runs_without_progress"] == 0 and s["orphaned_children"] == 0
    for k in s["kill_log"]:
        if k["kind"] == "after_checkpoint":
            assert k["checkpointed_after"] == k["produced"] > k["checkpointed_before"]
        if k["kind"] == "mid_batch":
            assert k["checkpointed_after"] == k["checkpointed_before"] < k["produced"]
    assert s["ok"]
