"""`fairstream eval ids`: the protocol runs end to end on real MovieLens and MiniLM."""

from __future__ import annotations

import json

import pytest

from stream.evaluate.idembed import VARIANTS, run_idembed_eval
from stream.evaluate.sim import load_world
from stream.settings import Settings


@pytest.mark.usefixtures("data_cache")
def test_eval_ids_reports_every_variant_and_a_verdict(data_cache, encoder, tmp_path):
    world = load_world(data_cache, 400, encoder=encoder)
    res = run_idembed_eval(Settings(), events=400, seeds=(0,), steps=10, out_dir=tmp_path,
                           json_path=tmp_path / "ids.json", world=world, progress=False)
    seed = res["per_seed"][0]
    assert seed["train_rows"] == 4 * seed["test_rows"] or seed["train_rows"] > seed["test_rows"]
    for variant in VARIANTS:
        for policy in ("hybrid_linucb", "linucb_shared"):
            cell = seed[variant][policy]
            assert 0.0 <= cell["auc"] <= 1.0 and cell["mse"] > 0 and cell["logloss"] > 0
    # the start map is the fine-tunes' common starting point: same loss before training
    assert seed["finetune"]["train_logloss_before"] == pytest.approx(
        seed["finetune_item_ids"]["train_logloss_before"], abs=1e-6)
    assert json.loads((tmp_path / "ids.json").read_text())["verdict"] == res["verdict"]
    assert "| finetune_item_ids | hybrid_linucb |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "ids.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
