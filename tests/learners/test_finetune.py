import time

import numpy as np
import pytest

from learners import (
    Adapter,
    FeatureMap,
    FineTuneError,
    FineTuner,
    ProfileStore,
    ReplayBuffer,
    refit_statistics,
    ridge_statistics,
)


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


def test_finetune_lowers_logloss_and_refit_matches_fresh_ridge(ml_stream):
    buf, log = _stream_into_buffer(ml_stream)
    fmap = FeatureMap(Adapter.from_pca(ml_stream["emb"], out_dim=FeatureMap.adapter_dim(64)), 64)
    tuner = FineTuner(steps=150, batch_size=256, lr=3e-3, device="cpu", every_events=1000,
                      duty_cycle=1.0, seed=0)
    assert tuner.maybe_start(buf, fmap, events_seen=len(log), now=0.0)
    result = tuner.wait(timeout=120)
    assert result is not None and not result.cancelled
    assert result.loss_after < result.loss_before - 0.005, result
    assert result.feature_space != fmap.feature_space == result.previous_feature_space
    assert result.steps == 150 and result.samples == 150 * 256 and result.samples_per_s > 0
    assert result.rows == len(log) and result.snapshot_seen == len(log)

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
    # the background thread computed the same rows for a stall-free swap
    np.testing.assert_allclose(result.X, X, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(result.r, r)


def test_consumer_keeps_running_during_background_finetune(ml_stream):
    buf, log = _stream_into_buffer(ml_stream)
    fmap = FeatureMap(Adapter.from_pca(ml_stream["emb"], out_dim=18), 64)
    tuner = FineTuner(steps=40, batch_size=64, device="cpu", every_events=None, duty_cycle=0.5,
                      every_seconds=10.0)
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


def test_triggers_and_cancel():
    tuner = FineTuner(steps=10**9, batch_size=8, device="cpu", every_events=100, min_rows=1)
    assert tuner.due(99, now=0.0) is None and tuner.due(100, now=0.0) == "events"
    assert tuner.due(0, now=0.0, drift=True) == "drift"
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(64, emb_dim=384)
    for _ in range(64):
        buf.add(rng.normal(size=384), rng.normal(size=384), {}, float(rng.integers(2)))
    fmap = FeatureMap(Adapter.from_pca(buf.snapshot().item_emb, out_dim=18), 64)
    assert tuner.maybe_start(buf, fmap, events_seen=5, drift=True)
    time.sleep(0.2)
    tuner.cancel()
    result = tuner.wait(timeout=30)
    assert result.cancelled and result.trigger == "drift"


def test_failure_surfaces_in_poll():
    tuner = FineTuner(steps=1, device="cpu", every_events=None)
    fmap = FeatureMap(Adapter(out_dim=18), 64)
    tuner.start(ReplayBuffer(4, emb_dim=384), fmap)  # empty buffer
    with pytest.raises(FineTuneError, match="empty"):
        tuner.wait(timeout=30)
    assert tuner.runs_failed == 1


def test_warm_up_runs_the_training_path_and_leaves_the_tuner_as_it_was():
    tuner = FineTuner(steps=5, device="cpu", every_events=100)
    fmap = FeatureMap(Adapter(out_dim=18), 64)
    adapter_before = fmap.adapter.to_bytes()
    assert tuner.warm_up(fmap) > 0
    assert (tuner.runs_started, tuner.runs_completed, tuner.running) == (0, 0, False)
    assert tuner.due(99, now=0.0) is None  # its triggers are untouched
    assert fmap.adapter.to_bytes() == adapter_before  # trains a clone, never the live map
