import json

import pytest

from stream.settings import Settings
from stream.sim.demo import MALFORMED, run_demo

pytestmark = [pytest.mark.broker, pytest.mark.model]


def test_demo_closes_the_loop_and_beats_random(data_cache, embedding_cache, tmp_path):
    settings = Settings().replace(
        data={"cache_dir": data_cache},
        model={"device": "cpu", "embedding_cache": str(embedding_cache)},
        worker={"metrics_port": 0},
    )
    summary = run_demo(settings, events=2500, out_dir=tmp_path / "run", progress=False)
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    for key in ("events", "events_per_s", "mean_reward", "random_mean_reward",
                "reward_by_user_group", "tail_exposure_share"):
        assert key in summary
    assert summary["arrivals"] == 2500
    assert summary["events"] > 2500  # impressions plus their clicks
    worker = summary["worker"]
    assert worker["events_consumed"] == summary["events"] + len(MALFORMED) + 1
    assert worker["rejected"] == len(MALFORMED) + 1
    assert worker["by_type"]["impression"] == 2500
    assert worker["rows_learned"] == 2500 * settings.bandit.slate_size  # all flushed at the end
    assert summary["mean_reward"] > summary["random_mean_reward"]
    # The loop closes through Kafka: the server picked up newer published policies.
    versions = summary["policy_versions"]
    assert versions["last"] > versions["first"] >= 1 and versions["changes"] >= 1
    assert len(summary["reward_by_quarter"]) == 4
    assert {"gender=F", "gender=M"} <= summary["reward_by_user_group"].keys()
    assert 0.0 < summary["tail_exposure_share"] < 1.0
    png = (tmp_path / "run" / "reward.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
