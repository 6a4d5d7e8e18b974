import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from learners import (
    Adapter,
    FeatureMap,
    FineTuneError,
    FineTuner,
    FineTuneTimeout,
    ProfileStore,
    ReplayBuffer,
    refit_statistics,
    ridge_statistics,
)
from learners.finetune_child import ChildRun, read_result
from learners.training import TrainSpec

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ml_stream(encoder, ml100k):
    """A MovieLens-100K slice: 250 most-rated items, first 4000 of their ratings by time."""
    inter = ml100k["inter"]
    ids, counts = np.unique(inter[:, 1].astype(int), return_counts=True)
    top = ids[np.argsort(-counts, kind="stable")[:250]]
    keep = np.isin(inter[:, 1].astype(int), top)
    rows = inter[keep][:4000]
    item_ids = sorted(top.tolist())
    emb = encoder.embed([ml100k["items"][i] for i in item_ids])
    index = {i: k for k, i in enumerate(item_ids)}
    return {"rows": rows, "emb": emb, "index": index, "users": ml100k["users"]}


def _stream_into_buffer(ml_stream, capacity=10_000):
    emb, index, users = ml_stream["emb"], ml_stream["index"], ml_stream["users"]
    profiles = ProfileStore(emb_dim=384, decay=0.9)
    buf = ReplayBuffer(capacity=capacity, seed=0)
    log = []
    for u, i, rating, ts in ml_stream["rows"]:
        e, attrs, reward = emb[index[int(i)]], users[int(u)], float(rating >= 4)
        prof = profiles.get(int(u)).copy()  # the profile as it was when the item was shown
        buf.add(e, prof, attrs, reward)
        log.append((e, prof, attrs, reward))
        profiles.observe(int(u), e, reward, now=ts)
    return buf, log


def _add(buf, n, seed=0):
    """``n`` rows whose reward is a linear rule of the item embedding; returns the items."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, 384)).astype(np.float32)
    buf.add_batch(emb, emb[::-1].copy(), rng.integers(0, 2, n), rng.integers(0, 7, n),
                  (emb @ np.random.default_rng(99).normal(size=384) > 0).astype(np.float64))
    return emb


def _synthetic(n, seed=0, capacity=None):
    """A buffer of ``n`` such rows and a PCA feature map of their items."""
    buf = ReplayBuffer(capacity or n, seed=seed, emb_dim=384)
    emb = _add(buf, n, seed)
    return buf, FeatureMap(Adapter.from_pca(emb, out_dim=FeatureMap.adapter_dim(64)), 64)


def _gone(pid):
    """The process has exited (and was reaped, or is a zombie nobody reaps yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_finetune_lowers_logloss_and_refit_matches_fresh_ridge(ml_stream):
    buf, log = _stream_into_buffer(ml_stream)
    fmap = FeatureMap(Adapter.from_pca(ml_stream["emb"], out_dim=FeatureMap.adapter_dim(64)), 64)
    tuner = FineTuner(steps=150, batch_size=256, lr=3e-3, device="cpu", every_events=1000,
                      min_rows=1000, seed=0)
    assert tuner.maybe_start(buf, fmap, events_seen=len(log), now=0.0)
    child_pid = tuner.child_pid
    assert child_pid is not None and child_pid != os.getpid()
    result = tuner.wait(timeout=300)
    assert result is not None and not result.cancelled
    assert result.pid == child_pid  # trained in the child, not here
    assert result.loss_after < result.loss_before - 0.005, result
    assert result.feature_space != fmap.feature_space == result.previous_feature_space
    assert result.fmap.adapter.to_bytes() != fmap.adapter.to_bytes()
    assert result.steps == 150 and result.samples == 150 * 256 and result.samples_per_s > 0
    assert result.rows == len(log) and result.snapshot_seen == len(log)
    assert (tuner.runs_started, tuner.runs_completed, tuner.running) == (1, 1, False)

    new = result.fmap
    X, r = refit_statistics(buf, new)
    lam = 1.0
    A_fresh, b_fresh = lam * np.eye(64), np.zeros(64)
    for e, prof, attrs, reward in log:  # a fresh ridge bandit fed the buffer in the new space
        phi = new.transform(e[None, :], prof, attrs)[0]
        A_fresh += np.outer(phi, phi)
        b_fresh += reward * phi
    A, b = ridge_statistics(X, r, lam)
    np.testing.assert_allclose(A, A_fresh, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(b, b_fresh, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(A, lam * np.eye(64) + X.T @ X, rtol=0, atol=1e-12)
    # the child computed the same rows, so the swap costs the consumer no φ pass
    np.testing.assert_allclose(result.X, X, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(result.r, r)


def test_child_trains_what_a_thread_trains_at_its_own_priority():
    buf, fmap = _synthetic(600)
    kw = dict(steps=20, batch_size=32, device="cpu", min_rows=1, seed=3, max_seconds=None)
    thread = FineTuner(**kw, background="thread", duty_cycle=1.0)  # one torch thread, as a child
    thread.start(buf, fmap)
    here = thread.wait()
    tuner = FineTuner(**kw)
    tuner.start(buf, fmap)
    job_dir = tuner.job_dir
    result = tuner.wait()
    assert result.pid != os.getpid() == here.pid
    assert result.fmap.feature_space == here.fmap.feature_space  # same weights, bit for bit
    assert (result.loss_before, result.loss_after) == (here.loss_before, here.loss_after)
    np.testing.assert_allclose(result.X, here.X, rtol=1e-12, atol=1e-12)
    assert not job_dir.exists()  # the job's files are gone
    assert result.wall_seconds >= result.train_seconds > 0


def test_child_runs_niced():
    buf, fmap = _synthetic(64)
    spec = TrainSpec(steps=2, batch_size=8)
    run = ChildRun(buf.snapshot(), fmap.adapter, 64, spec, "cpu", 1, nice=7, max_seconds=None)
    try:
        run.join()
        assert run.result().nice == min(19, os.nice(0) + 7)
    finally:
        run.close()


def test_drift_below_min_rows_waits_for_min_rows_then_fires_once():
    buf, fmap = _synthetic(100, capacity=200)
    tuner = FineTuner(steps=2, batch_size=8, device="cpu", every_events=None, min_rows=150,
                      background="thread", duty_cycle=1.0)
    assert not tuner.maybe_start(buf, fmap, events_seen=100, drift=True)  # too few rows
    assert tuner.drift_pending and tuner.runs_started == 0
    _add(buf, 49, seed=1)
    assert len(buf) == 149 and not tuner.maybe_start(buf, fmap, events_seen=149)
    _add(buf, 1, seed=2)
    assert tuner.maybe_start(buf, fmap, events_seen=150)  # no new drift flag: the kept one
    assert not tuner.drift_pending
    # a drift while a run is in flight is kept for the next start, not dropped
    assert not tuner.maybe_start(buf, fmap, events_seen=150, drift=True)
    assert tuner.drift_pending and tuner.runs_started == 1
    result = tuner.wait()
    assert result.trigger == "drift" and result.rows == 150
    assert tuner.maybe_start(buf, fmap, events_seen=150)  # the second drift
    assert tuner.wait().trigger == "drift"
    assert not tuner.maybe_start(buf, fmap, events_seen=150)  # and no third


@pytest.mark.parametrize("background", ["process", "thread"])
def test_max_seconds_stops_the_run_and_counts_it(background):
    buf, fmap = _synthetic(64)
    tuner = FineTuner(steps=10**9, batch_size=8, device="cpu", min_rows=1, max_seconds=1.0,
                      background=background, duty_cycle=1.0)
    tuner.start(buf, fmap, trigger="drift")
    pid, job_dir = tuner.child_pid, tuner.job_dir
    with pytest.raises(FineTuneTimeout, match="max_seconds=1"):
        tuner.wait()  # joins until the deadline, then stops it
    assert (tuner.runs_timed_out, tuner.runs_failed, tuner.runs_completed) == (1, 0, 0)
    assert not tuner.running and tuner.poll() is None
    if background == "process":
        assert _gone(pid) and not job_dir.exists()


def test_a_timeout_is_reported_before_the_next_run_starts():
    buf, fmap = _synthetic(64)
    tuner = FineTuner(steps=10**9, batch_size=8, device="cpu", min_rows=1, max_seconds=1.0,
                      every_events=1)
    assert tuner.maybe_start(buf, fmap, events_seen=1)
    time.sleep(1.5)  # past the deadline for certain; nobody has polled
    assert not tuner.maybe_start(buf, fmap, events_seen=2)  # stops it, keeps the error
    assert tuner.runs_timed_out == 1 and not tuner.running
    with pytest.raises(FineTuneTimeout):
        tuner.poll()
    assert tuner.maybe_start(buf, fmap, events_seen=3)
    tuner.cancel()
    assert (tuner.runs_started, tuner.runs_timed_out, tuner.runs_cancelled) == (2, 1, 1)


def test_run_past_max_seconds_raises_and_counts():
    buf, fmap = _synthetic(64)
    tuner = FineTuner(steps=10**9, batch_size=8, device="cpu", min_rows=1, max_seconds=0.5)
    with pytest.raises(FineTuneTimeout):
        tuner.run(buf, fmap)
    assert (tuner.runs_started, tuner.runs_timed_out) == (1, 1)


def test_cancel_kills_the_child_at_once_and_leaves_nothing():
    buf, fmap = _synthetic(64)
    tuner = FineTuner(steps=10**9, batch_size=8, device="cpu", min_rows=1, max_seconds=None)
    tuner.start(buf, fmap)
    pid, job_dir = tuner.child_pid, tuner.job_dir
    child = tuner._job.run.proc
    assert not _gone(pid)
    tuner.cancel()
    # Killed, not asked to stop and waited for: its exit status says so (not a clock).
    assert child.returncode == -signal.SIGKILL
    assert _gone(pid) and not job_dir.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not a zombie
    assert tuner.wait() is None and not tuner.running
    assert (tuner.runs_started, tuner.runs_cancelled, tuner.runs_completed) == (1, 1, 0)


def test_cancel_in_thread_drops_the_run():
    buf, fmap = _synthetic(64)
    tuner = FineTuner(steps=10**9, batch_size=8, device="cpu", min_rows=1, max_seconds=None,
                      background="thread", duty_cycle=1.0)
    tuner.start(buf, fmap)
    tuner.cancel()
    assert tuner.wait() is None and not tuner.running
    assert (tuner.runs_cancelled, tuner.runs_completed) == (1, 0)


def test_child_exits_when_its_parent_dies(tmp_path):
    script = (
        "import os, sys, numpy as np\n"
        "from learners import Adapter, FeatureMap, FineTuner, ReplayBuffer\n"
        "e = np.random.default_rng(0).normal(size=(64, 384)).astype(np.float32)\n"
        "buf = ReplayBuffer(64, emb_dim=384)\n"
        "buf.add_batch(e, e, np.zeros(64), np.zeros(64), np.ones(64))\n"
        "t = FineTuner(steps=10**9, batch_size=8, device='cpu', min_rows=1)\n"
        "t.start(buf, FeatureMap(Adapter.from_pca(e, out_dim=18), 64))\n"
        "print(t.child_pid, t.job_dir, flush=True)\n"
        "os._exit(0)  # no cleanup: as if killed\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    pid, job_dir = int(out[0]), Path(out[1])
    deadline = time.monotonic() + 60
    while not (_gone(pid) and not job_dir.exists()) and time.monotonic() < deadline:
        time.sleep(0.05)  # not our child: poll its /proc entry until it has exited
    assert _gone(pid) and not job_dir.exists()


@pytest.fixture(scope="module")
def finished_job(tmp_path_factory):
    """A real child's job directory after it exited, and what reading it needs."""
    buf, fmap = _synthetic(200)
    run = ChildRun(buf.snapshot(), fmap.adapter, 64, TrainSpec(steps=3, batch_size=16), "cpu",
                   1, nice=0, max_seconds=None)
    run.join()
    assert run.proc.returncode == 0
    keep = tmp_path_factory.mktemp("job") / "done"
    shutil.copytree(run.dir, keep)
    run.close()
    return keep, fmap


def _corrupt(path: Path, what: str) -> None:
    if what == "garbage json":
        (path / "result.json").write_text("{not json")
    elif what == "other format":
        (path / "result.json").write_text('{"format": "something-else"}')
    elif what == "loss is text":
        text = (path / "result.json").read_text()
        text = text.replace('"loss_after": ', '"loss_after": "x", "_": ')
        (path / "result.json").write_text(text)
    elif what == "no adapter":
        (path / "adapter_out.safetensors").unlink()
    elif what == "truncated adapter":
        data = (path / "adapter_out.safetensors").read_bytes()
        (path / "adapter_out.safetensors").write_bytes(data[: len(data) // 2])
    elif what == "other adapter":
        (path / "adapter_out.safetensors").write_bytes(Adapter(out_dim=20).to_bytes())
    elif what == "rows wrong shape":
        np.savez(path / "refit.npz", X=np.zeros((199, 64)))
    elif what == "rows not finite":
        X = np.load(path / "refit.npz")["X"].copy()
        X[5, 5] = np.nan
        np.savez(path / "refit.npz", X=X)
    elif what == "rows pickled":
        np.savez(path / "refit.npz", X=np.array([{"a": 1}], dtype=object))
    elif what == "not a zip":
        (path / "refit.npz").write_bytes(b"PK\x03\x04 garbage")


CORRUPTIONS = ["garbage json", "other format", "loss is text", "no adapter", "truncated adapter",
               "other adapter", "rows wrong shape", "rows not finite", "rows pickled",
               "not a zip"]


def test_a_good_job_reads_back(finished_job):
    path, fmap = finished_job
    out = read_result(path, 200, 64, fmap.adapter)
    assert out.X.shape == (200, 64) and out.outcome.steps == 3 and out.pid != os.getpid()


@pytest.mark.parametrize("what", CORRUPTIONS)
def test_a_corrupt_result_is_a_finetune_error(finished_job, tmp_path, what):
    path, fmap = finished_job
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    _corrupt(bad, what)
    with pytest.raises(FineTuneError, match="unreadable"):
        read_result(bad, 200, 64, fmap.adapter)


def test_corrupt_result_surfaces_in_poll_and_is_counted():
    buf, fmap = _synthetic(200)
    tuner = FineTuner(steps=3, batch_size=16, device="cpu", min_rows=1, max_seconds=None)
    tuner.start(buf, fmap)
    job_dir = tuner.job_dir
    while tuner.running:
        time.sleep(0.05)  # until the child has exited (poll() would read its result)
    _corrupt(job_dir, "truncated adapter")
    with pytest.raises(FineTuneError, match="unreadable"):
        tuner.poll()
    assert (tuner.runs_failed, tuner.runs_completed) == (1, 0) and not job_dir.exists()
    assert tuner.poll() is None


@pytest.mark.parametrize("background", ["process", "thread"])
def test_consumer_keeps_running_during_background_finetune(ml_stream, background):
    buf, log = _stream_into_buffer(ml_stream)
    fmap = FeatureMap(Adapter.from_pca(ml_stream["emb"], out_dim=18), 64)
    tuner = FineTuner(steps=40, batch_size=64, device="cpu", every_events=None, duty_cycle=0.5,
                      every_seconds=10.0, min_rows=1000, background=background)
    assert not tuner.maybe_start(buf, fmap, events_seen=0, now=0.0)
    assert tuner.maybe_start(buf, fmap, events_seen=0, now=11.0)
    assert not tuner.maybe_start(buf, fmap, events_seen=0, now=30.0)  # one at a time
    served = 0
    while tuner.running:
        e, prof, attrs, _ = log[served % len(log)]
        fmap.transform(e[None, :], prof, attrs)
        buf.add(e, prof, attrs, 1.0)
        served += 1
    assert served > 10
    result = tuner.poll()
    assert result is not None and result.trigger == "seconds" and result.steps == 40
    assert tuner.poll() is None


def test_triggers():
    tuner = FineTuner(steps=1, batch_size=8, device="cpu", every_events=100)
    assert tuner.due(99, now=0.0) is None and tuner.due(100, now=0.0) == "events"
    assert tuner.due(0, now=0.0, drift=True) == "drift"
    assert tuner.min_rows == 5_000 and tuner.max_seconds == 300.0


@pytest.mark.parametrize("background", ["process", "thread"])
def test_failure_surfaces_in_poll(background):
    tuner = FineTuner(steps=1, device="cpu", every_events=None, background=background)
    fmap = FeatureMap(Adapter(out_dim=18), 64)
    tuner.start(ReplayBuffer(4, emb_dim=384), fmap)  # empty buffer
    with pytest.raises(FineTuneError, match="empty"):
        tuner.wait(timeout=120)
    assert tuner.runs_failed == 1


def test_bad_settings_are_refused():
    for kw in ({"background": "fork"}, {"max_seconds": 0}, {"nice": -1}, {"threads": 0}):
        with pytest.raises(ValueError):
            FineTuner(device="cpu", **kw)


def test_warm_up_runs_the_thread_path_and_leaves_the_tuner_as_it_was():
    tuner = FineTuner(steps=5, device="cpu", every_events=100, background="thread")
    fmap = FeatureMap(Adapter(out_dim=18), 64)
    adapter_before = fmap.adapter.to_bytes()
    assert tuner.warm_up(fmap) > 0
    assert (tuner.runs_started, tuner.runs_completed, tuner.running) == (0, 0, False)
    assert tuner.due(99, now=0.0) is None  # its triggers are untouched
    assert fmap.adapter.to_bytes() == adapter_before  # trains a clone, never the live map
    assert FineTuner(device="cpu").warm_up(fmap) == 0.0  # a child warms nothing here


def test_item_id_embeddings_learn_what_the_text_cannot_see():
    """Items with identical embeddings but opposite rewards: only an id can tell them apart.

    The table starts at zero (so ``loss_before`` is the plain φ's), trains only the
    rows of items that appear, and lowers the loss where the adapter alone cannot."""
    from learners.training import train_adapter

    rng = np.random.default_rng(0)
    n, n_items = 4000, 6  # items 0..4 appear; item 5 never does
    base = rng.normal(size=384).astype(np.float32)
    item_rows = rng.integers(0, 5, n)
    buf = ReplayBuffer(n, seed=0, emb_dim=384)
    buf.add_batch(np.tile(base, (n, 1)), rng.normal(size=(n, 384)).astype(np.float32),
                  np.zeros(n, np.int64), np.zeros(n, np.int64),
                  (item_rows % 2 == 0).astype(np.float64), item_rows=item_rows)
    rows = buf.snapshot()
    adapter = Adapter.from_pca(rng.normal(size=(50, 384)), out_dim=FeatureMap.adapter_dim(64))
    spec = TrainSpec(steps=150, batch_size=128, lr=5e-2, seed=0)
    plain = train_adapter(rows, adapter, 64, spec, torch.device("cpu"))
    ids = train_adapter(rows, adapter, 64, spec, torch.device("cpu"), item_ids=n_items)
    assert plain.item_table is None and ids.item_table.shape == (n_items, 18)
    assert ids.loss_before == pytest.approx(plain.loss_before, abs=1e-6)
    assert ids.loss_after < 0.5 * plain.loss_after  # the ids separate what text cannot
    assert np.abs(ids.item_table[:5]).max() > 0 and not ids.item_table[5].any()
    with pytest.raises(FineTuneError, match="item_ids"):
        train_adapter(rows, adapter, 64, spec, torch.device("cpu"), item_ids=3)
