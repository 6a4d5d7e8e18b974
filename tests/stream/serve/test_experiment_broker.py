"""A guardrail stop end to end on the real broker: a server splits users between control
and a bad arm, the worker learns from the real impressions and clicks, finds the bad arm
worse than control beyond its always-valid interval, stops it (a new experiment version
on the experiments topic), and the server follows: the arm's share goes to 0 and its
users are served by control. Phases wait on metrics, never on timing."""

from __future__ import annotations

import time

import httpx
import pytest

from stream.cli_experiment import experiment_report
from stream.kafka.experiments import read_experiments
from stream.kafka.producers import publish_catalog
from stream.kafka.topics import ensure_topics
from stream.serve import ServerThread, ServeRuntime
from stream.settings import ServeSettings
from stream.worker import Worker
from stream.worker.runner import WorkerThread
from tests.stream.serve.conftest import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.model]

WINDOW_S = 1.0
TOKEN = "guard-token"


def test_a_bad_arm_is_stopped_by_its_guardrail(make_settings, ml_items, encoder, tmp_path):
    settings = make_settings(
        events={"attribution_window_s": WINDOW_S},
        experiment={"name": "guard", "auto_stop": True, "results_every_s": 0.2,
                    "arms": [{"name": "control", "share": 0.5},
                             {"name": "bad", "share": 0.5, "alpha": 3.0}]},
        serve={"admin_token": TOKEN})
    ensure_topics(settings)
    publish_catalog(settings, ml_items)
    worker = Worker(settings, encoder=encoder)
    wm = worker.metrics.registry
    with WorkerThread(worker):
        runtime = ServeRuntime(settings, ServeSettings(seed=3, admin_token=TOKEN),
                               encoder=encoder).start()
        try:
            with ServerThread(runtime.app) as srv:
                runtime.wait_ready(90)
                client = httpx.Client(base_url=srv.url, timeout=10)
                sm = runtime.metrics.registry
                share = {"experiment": "guard", "arm": "bad"}
                assert sm.get_sample_value("fairstream_serve_experiment_share", share) == 0.5

                # Phase 1: 120 users, one slate each; control's users click its top item,
                # the bad arm's users click nothing.
                arms = {}
                for n in range(120):
                    r = client.post("/recommend", json={"user_id": f"g{n}", "k": 5}).json()
                    arms[f"g{n}"] = r["arm"]
                    if r["arm"] == "control":
                        f = client.post("/feedback", json={
                            "type": "click", "user_id": f"g{n}", "request_id": r["request_id"],
                            "item_id": r["items"][0]})
                        assert f.status_code == 202, f.text
                assert 40 <= list(arms.values()).count("bad") <= 80
                # Phase 2: once event time is past phase 1's windows, slates of 40 more
                # users move every partition's watermark: phase 1's impressions close.
                time.sleep(WINDOW_S + 0.5)
                for n in range(40):
                    assert client.post("/recommend", json={"user_id": f"w{n}"}).status_code \
                        == 200
                # Phase 3: the worker counts them, breaches, stops the arm ...
                wait_for(lambda: wm.get_sample_value(
                    "fairstream_experiment_guardrail_stops_total", share) == 1, 60,
                    "the guardrail stop")
                assert wm.get_sample_value("fairstream_experiment_guardrail_breaches_total",
                                           {**share, "guardrail": "reward"}) == 1
                assert wm.get_sample_value("fairstream_experiment_impressions_total",
                                           share) >= 40
                # ... and the server follows the new version: the bad arm's share is 0.
                wait_for(lambda: sm.get_sample_value(
                    "fairstream_serve_experiment_share", share) == 0, 30, "share 0")
                assert sm.get_sample_value("fairstream_serve_experiment_version") == 2
                assert sm.get_sample_value("fairstream_serve_experiment_changes_total",
                                           {"by": "guardrail"}) == 1
                state = client.get("/admin/experiment",
                                   headers={"authorization": f"Bearer {TOKEN}"}).json()
                bad = next(a for a in state["experiment"]["arms"] if a["name"] == "bad")
                assert bad["stopped"].startswith("guardrail reward")
                assert state["experiment"]["changed_by"] == "guardrail"
                # Phase 4: the bad arm's users, and everyone else, get control now.
                for user in list(arms)[:60]:
                    r = client.post("/recommend", json={"user_id": user}).json()
                    assert r["arm"] == "control"
                # The report reads what the worker published: its results for v2 (the
                # worker publishes them once it adopts v2; the send is asynchronous).
                wait_for(lambda: wm.get_sample_value(
                    "fairstream_experiment_share", share) == 0, 30, "worker follows v2")
                wait_for(lambda: read_experiments(settings)[1].get("guard", {}).get("version")
                         == 2, 30, "results of v2 on the experiments topic")
            text, png = experiment_report(settings, "guard", tmp_path)
        finally:
            runtime.close()
    assert "stopped: guardrail reward" in text and "control*" in text
    assert png.stat().st_size > 10_000
