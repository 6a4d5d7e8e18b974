"""The closed-loop evaluation simulator: determinism, bookkeeping, peers, report shape."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bandits import FairnessTracker, position_weights
from stream.evaluate.agents import PolicyAgent
from stream.evaluate.simulation import (
    PolicyRun,
    SeedStream,
    build_world,
    draw_stream,
    exposure_disparity,
    run_seed,
    summarize_run,
)
from stream.evaluate.suite import make_agents


def _synthetic_world(n_items=60, n_users=12, per_user=30, seed=0, good=None):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n_items, 384)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    au, ai, ar = [], [], []
    for u in range(n_users):
        items = rng.choice(n_items, size=per_user, replace=False)
        for i in items:
            au.append(u)
            ai.append(int(i))
            ar.append(1.0 if (good is not None and i == good) else float(rng.random() < 0.3))
    order = rng.permutation(len(au))
    au, ai, ar = (np.array(x)[order] for x in (au, ai, ar))
    attrs = [{"gender": "MF"[u % 2], "age": 20 + 7 * (u % 5)} for u in range(n_users)]
    return build_world([f"m{i}" for i in range(n_items)], emb, np.arange(n_items) >= 12,
                       [f"u{u}" for u in range(n_users)], attrs, au, ai, ar)


def test_same_seed_same_rewards_other_seed_differs():
    world = _synthetic_world()
    names = ["linucb", "ts", "random", "popular", "river_ucb", "vw_squarecb"]

    def rewards(seed):
        out = run_seed(world, draw_stream(world, seed, 10), make_agents(names, world, seed), k=3,
                       progress=False)
        return {n: r.reward.copy() for n, r in out["runs"].items()}

    a, b, c = rewards(1), rewards(1), rewards(2)
    for n in names:
        assert np.array_equal(a[n], b[n]), n
    assert any(not np.array_equal(a[n], c[n]) for n in names)


class _Fixed:
    """Shows candidates 0..k-1 whatever happens."""

    name = "fixed"

    def select(self, arr, k, rng):
        return np.arange(k)

    def learn(self, arr, shown, rewards):
        pass


def test_regret_and_reward_bookkeeping_hand_computed():
    world = _synthetic_world(n_items=30, n_users=2, per_user=10)
    # Two arrivals, 4 candidates each, slate of 2; hand-picked rewards.
    cands = np.array([world.pools[world.arrival_user[0]][:4],
                      world.pools[world.arrival_user[1]][:4]])
    R = np.array([[0.0, 1.0, 1.0, 1.0],    # shown r=(0,1): best 2, got 1
                  [1.0, 1.0, 0.0, 0.0]])   # shown r=(1,1): best 2, got 2
    tail = world.tail[cands]
    small = type(world)(**{**world.__dict__, "arrival_user": world.arrival_user[:2],
                           "profiles": world.profiles[:2]})
    out = run_seed(small, SeedStream(0, cands, R), [_Fixed()], k=2, progress=False)
    run = out["runs"]["fixed"]
    m = summarize_run(run, out)
    assert out["best"].tolist() == [2.0, 2.0]
    assert run.reward.tolist() == [1.0, 2.0]
    assert m["regret"] == pytest.approx(1.0)
    assert m["mean_reward"] == pytest.approx(3.0 / 4.0)
    w = position_weights(2)
    tail_w = sum(w[tail[t, :2]].sum() for t in range(2))
    assert m["tail_exposure_share"] == pytest.approx(tail_w / (2 * w.sum()))
    assert m["tail_candidate_share"] == pytest.approx(tail.mean())
    assert m["curves"]["cum_regret"].tolist() == [1.0, 1.0]
    # Vectorised disparity equals bandits.FairnessTracker's on the same slates.
    tracker = FairnessTracker(window=10)
    for t in range(2):
        tracker.observe(np.where(tail[t, :2], "tail", "head").tolist(), R[t, :2])
    assert m["exposure_disparity"] == pytest.approx(tracker.cumulative_report().disparity)


def test_exposure_disparity_matches_tracker_random_slates():
    rng = np.random.default_rng(3)
    T, k = 200, 4
    run = PolicyRun.empty("x", k, T)
    tracker = FairnessTracker(window=T)
    w = position_weights(k)
    for t in range(T):
        is_tail = rng.random(k) < 0.4
        r = (rng.random(k) < 0.5).astype(float)
        run.reward[t], run.tail_weight[t], run.tail_reward[t] = r.sum(), w[is_tail].sum(), \
            r[is_tail].sum()
        tracker.observe(np.where(is_tail, "tail", "head").tolist(), r)
    assert exposure_disparity(run) == pytest.approx(tracker.cumulative_report().disparity)


def test_vw_learns_clearly_best_item():
    world = _synthetic_world(n_items=40, n_users=10, per_user=25, seed=4, good=7)
    # Every candidate set holds the good item (always rewarded) among mostly zeros.
    rng = np.random.default_rng(0)
    T, n = 1500, 8
    users = rng.integers(0, 10, size=T)
    cands = np.empty((T, n), dtype=np.intp)
    for t in range(T):
        others = rng.choice(np.setdiff1d(np.arange(40), [7]), size=n - 1, replace=False)
        cands[t] = rng.permutation(np.r_[others, 7])
    R = (cands == 7).astype(float)
    big = type(world)(**{**world.__dict__, "arrival_user": users.astype(np.intp),
                         "profiles": np.zeros((T, 384), dtype=np.float32),
                         "hist_len": np.zeros(T, dtype=np.intp)})
    agents = make_agents(["vw_squarecb", "random"], big, 0)
    out = run_seed(big, SeedStream(0, cands, R), agents, k=1, progress=False)
    late = slice(T // 2, T)
    vw = out["runs"]["vw_squarecb"].reward[late].mean()
    rnd = out["runs"]["random"].reward[late].mean()
    assert rnd < 0.25
    assert vw > 0.6 and vw > rnd + 0.3


def test_policy_agent_repr_and_fair_bonus():
    from bandits import ExposureController, LinUCB

    a = PolicyAgent("linucb_fair", LinUCB(4, alpha=0.1), ExposureController(0.1))
    assert "linucb_fair" in repr(a)


@pytest.mark.usefixtures("data_cache")
def test_report_shape_tiny_run(data_cache, encoder, tmp_path):
    from stream.evaluate.sim import run_eval_sim

    out = tmp_path / "eval"
    res = run_eval_sim(data_cache, events=300, seeds=1, out_dir=out,
                       json_path=tmp_path / "r.json", progress=False, encoder=encoder,
                       peers=["random", "popular", "vw_squarecb", "river_ts"],
                       fairstream=["deployed", "hybrid_linucb", "linucb", "neural_linear",
                                   "linucb_fair"],
                       lambdas=(0.0, 0.01), workers=1,
                       hyper={"linucb": {"alpha": 0.1, "lam": 1.0},
                              "hybrid_linucb": {"alpha": 0.3, "lam": 1.0},
                              "ts": {"v": 0.03, "lam": 1.0, "mc_samples": 8},
                              "neural_linear": {"alpha": 0.1, "lam": 1.0, "every": 150,
                                                "steps": 20, "batch_size": 64, "lr": 3e-3},
                              "fair_lam": 0.001})
    data = json.loads((out / "results.json").read_text())
    assert json.loads((tmp_path / "r.json").read_text())["config"] == data["config"]
    pol = data["policies"]
    assert {"deployed", "hybrid_linucb", "linucb", "neural_linear", "linucb_fair",
            "hybrid_linucb_clam0.01", "random", "popular", "vw_squarecb", "river_ts"} <= set(pol)
    for name, p in pol.items():
        for key in ("mean_reward", "mean_reward_std", "regret", "reward_by_user_group",
                    "tail_exposure_share", "exposure_disparity"):
            assert key in p, (name, key)
        assert 0.0 <= p["mean_reward"] <= 1.0
        assert p["regret"] >= 0
    assert pol["neural_linear"]["finetunes_per_seed"] == 2
    assert [p["lam"] for p in data["tradeoff"]] == [0.0, 0.01]
    assert {p["target"] for p in data["tradeoff"]} == {"candidates"}  # the default sweep
    assert "neural_vs_fixed_second_half" in data and "met" in data["neural_vs_fixed_second_half"]
    assert data["config"]["events"] == 300
    report = (out / "report.md").read_text()
    assert "## Headline (sorted by mean reward)" in report
    rows = [ln for ln in report.splitlines() if ln.startswith("| ") and "|---" not in ln]
    assert any(ln.startswith("| vw_squarecb |") for ln in rows)
    for name in ("reward_regret.png", "reward_by_group.png", "tail_exposure.png",
                 "tradeoff.png"):
        blob = (out / name).read_bytes()
        assert len(blob) > 1000 and blob[:8] == b"\x89PNG\r\n\x1a\n", name
    assert res["policies"].keys() == pol.keys()
