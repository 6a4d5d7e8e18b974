"""The soak on real processes for half a minute (warm-up scaled down): its report, its
clean stop, and a clear failure when a process dies; its slope fit against closed forms."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time

import pytest

from stream.bench.procstats import alive, child_pids, cmdline
from stream.bench.soak import SoakFailure, run_soak, summarize
from stream.settings import Settings

PROCS = ("worker", "fetch", "server", "broker", "driver")


@pytest.fixture
def soak_settings(data_cache, embedding_cache):
    return Settings().replace(
        kafka={"events_partitions": 2, "session_timeout_ms": 6000},
        data={"cache_dir": data_cache},
        model={"device": "cpu", "embedding_cache": str(embedding_cache)},
        finetune={"enabled": False})


def _sample(t: float, rss_mb: float, fds: int, lag: float) -> dict:
    proc = {"rss_bytes": rss_mb * 2**20, "fds": fds, "threads": 4, "cpu_s": t / 2}
    return {"t_s": t, "lag": lag, "procs": {"worker": proc}}


def test_summarize_fits_closed_forms():
    # RSS 400 MB + 2 MB/min, fds constant, lag 3 + 0.5/min; samples every 10 s for 10 min.
    samples = [_sample(t, 400 + 2 * t / 60, 20, 3 + 0.5 * t / 60) for t in range(0, 601, 10)]
    s = summarize(samples, warmup_s=120)
    w = s["worker"]
    assert w["rss_mb_per_min"] == pytest.approx(2.0, rel=1e-12)
    assert w["fds_per_min"] == 0 and w["threads_per_min"] == 0
    assert w["cpu_pct"] == pytest.approx(50.0, rel=1e-12)
    assert s["lag"]["per_min"] == pytest.approx(0.5, rel=1e-12)
    # 60 s windows: medians at minute 2.5 (405 MB) and 9.5 (419 MB).
    assert s["window_s"] == 60 and s["after_warmup_s"] == 480
    assert w["rss_growth_pct"] == pytest.approx(100 * (419 - 405) / 405, rel=1e-12)
    with pytest.raises(ValueError, match="after warm-up"):
        summarize(samples, warmup_s=600)


@pytest.mark.broker
@pytest.mark.model
def test_short_soak_reports_and_cleans_up(soak_settings, tmp_path):
    json_path = tmp_path / "soak.json"
    r = run_soak(soak_settings, 0.5, out_dir=tmp_path / "out", json_path=json_path,
                 event_rate=200, request_rate=20, warmup_min=0.1, interval_s=1.0,
                 progress=False)
    assert json.loads(json_path.read_text()) == json.loads(
        (tmp_path / "out" / "soak.json").read_text())
    assert (tmp_path / "out" / "soak.png").stat().st_size > 10_000
    assert r["exit_codes"] == {"server": 0, "worker": 0}
    assert set(r["pids"]) == set(PROCS)
    for name in ("worker", "fetch", "server", "broker"):
        assert not alive(r["pids"][name]), name
    assert 25 <= len(r["samples"]) <= 35 and r["samples"][-1]["t_s"] >= 30
    for name in PROCS:
        fig = r["summary"][name]
        for key in ("rss_mb_per_min", "fds_per_min", "threads_per_min", "rss_growth_pct",
                    "cpu_pct"):
            assert math.isfinite(fig[key]), (name, key)
        assert fig["rss_mb_start"] > 5 and fig["fds_range"][0] > 0
    assert r["summary"]["broker"]["cpu_pct"] > 0
    t = r["totals"]
    assert 5_000 <= t["events_produced"] <= 6_100 and t["produce_errors"] == 0
    assert 500 <= t["requests"] <= 610 and t["requests_failed"] == 0
    # The replay and the server's impressions and clicks, all consumed by the end.
    assert t["events_consumed"] >= t["events_produced"]
    assert r["worker_report"]["events"] >= t["events_consumed"]
    assert math.isfinite(r["summary"]["lag"]["per_min"])
    assert set(r["targets"]["rss_growth_pct"]) == {"worker", "fetch", "server"}
    assert isinstance(r["targets"]["lag_flat"], bool)


@pytest.mark.broker
@pytest.mark.model
def test_a_dead_server_fails_the_soak_clearly(soak_settings, tmp_path):
    killed: list[int] = []
    before = set(child_pids(os.getpid()))  # e.g. a session broker of other tests
    started: set[int] = set()

    def kill_server_once_loaded() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            for pid in child_pids(os.getpid()):
                if "serve" in cmdline(pid) and "--port" in cmdline(pid):
                    time.sleep(3)  # let the soak's load start
                    mine = set(child_pids(os.getpid())) - before
                    started.update(mine, *(child_pids(p) for p in mine))
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    break
            time.sleep(0.2)

    threading.Thread(target=kill_server_once_loaded, daemon=True).start()
    with pytest.raises(SoakFailure, match=r"server \(pid \d+\) exited with code -9"):
        run_soak(soak_settings, 2.0, out_dir=tmp_path / "out", event_rate=100,
                 request_rate=10, warmup_min=0.1, interval_s=1.0, progress=False,
                 start_timeout_s=300)
    assert killed
    # Everything the soak started is gone: no worker, fetch process or broker left behind.
    assert len(started) >= 4  # broker, worker, its fetch process, server
    time.sleep(1.0)
    assert [p for p in started if alive(p)] == []
