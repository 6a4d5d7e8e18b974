"""Peers configured as their users configure them, cold-start bookkeeping, equal-budget tuning."""

from __future__ import annotations

import numpy as np
import pytest

from stream.evaluate.coldstart import ColdStartLog
from stream.evaluate.peers import VWAgent
from stream.evaluate.simulation import (
    Arrival,
    SeedStream,
    build_world,
    draw_stream,
    run_seed,
    summarize_run,
)
from stream.evaluate.suite import VW_CONFIGS, make_agents
from stream.evaluate.tuning import apply_config, tune


def _world(n_items=60, n_users=12, per_user=40, seed=0, holdout=0.0, n_arrivals=None):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n_items, 384)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    au, ai, ar = [], [], []
    for u in range(n_users):
        for i in rng.choice(n_items, size=per_user, replace=False):
            au.append(u)
            ai.append(int(i))
            ar.append(float(rng.random() < 0.5))
    order = rng.permutation(len(au))
    au, ai, ar = (np.array(x)[order] for x in (au, ai, ar))
    attrs = [{"gender": "MF"[u % 2], "age": 20 + 7 * (u % 5), "occupation": "engineer"}
             for u in range(n_users)]
    meta = [{"title": f"Toy Story {i}", "year": 1990 + i % 10, "genres": ("Drama", "Children's")}
            for i in range(n_items)]
    return build_world([f"m{i}" for i in range(n_items)], emb, np.arange(n_items) >= 12,
                       [f"u{u}" for u in range(n_users)], attrs, au, ai, ar, item_meta=meta,
                       holdout=holdout, holdout_seed=3, min_pool=10, n_arrivals=n_arrivals)


def _arrival(world, t, cands):
    u = int(world.arrival_user[t])
    return Arrival(t, u, np.asarray(cands), [world.item_ids[i] for i in cands],
                   np.zeros((len(cands), world.dim)), world.profiles[t], world.user_attrs[u],
                   (0, 0), ["head"] * len(cands), world.history(t))


def test_vw_example_text_holds_every_namespace_and_id():
    world = _world()
    t = next(t for t in range(world.n_arrivals) if world.hist_len[t] >= 2)
    arr = _arrival(world, t, [5, 7])
    agent = VWAgent("vw_squarecb", world, VW_CONFIGS["vw_squarecb"])
    shared, a5, a7 = agent.example(arr)
    u = arr.user
    assert shared.startswith(f"shared |u u{u} |a g{'mf'[u % 2]} ")
    assert " oengineer " in shared
    hist = " ".join(f"m{i}" for i in arr.history.tolist())
    assert shared.endswith(f"|h {hist}")
    assert a5 == "|i m5 |g drama childrens y1995 d199 |t 5 story toy"
    assert a7.startswith("|i m7 |g ")
    agent.finish()
    # The history is the user's logged likes before t, in log order.
    liked = world.liked[u][: world.hist_len[t]]
    assert arr.history.tolist() == liked.tolist()
    assert all(world.pool_rewards[u][world.pools[u].tolist().index(i)] == 1.0
               for i in liked.tolist())


def test_vw_dense_phi_example_uses_phi_namespaces():
    world = _world()
    agent = VWAgent("vw_dense_phi_squarecb", world, VW_CONFIGS["vw_dense_phi_squarecb"],
                    features="dense_phi")
    shared, item = agent.example(_arrival(world, 0, [3]))
    assert shared.startswith("shared |U ") and item.startswith("|A i0:")
    agent.finish()
    with pytest.raises(ValueError, match="features"):
        VWAgent("vw_x", world, "", features="ids")


def test_vw_with_ids_learns_each_users_own_best_item():
    # Item 3 pays for even users only and item 4 for odd users only: no item-level
    # average separates them, the user x item cross (-q ui) does.
    world = _world(n_items=40, n_users=6, per_user=30, seed=2)
    rng = np.random.default_rng(1)
    T, n = 2000, 6
    users = rng.integers(0, 6, size=T)
    cands = np.empty((T, n), dtype=np.intp)
    for t in range(T):
        others = rng.choice(np.arange(5, 40), size=n - 2, replace=False)
        cands[t] = rng.permutation(np.r_[others, 3, 4])
    R = np.where(users[:, None] % 2 == 0, cands == 3, cands == 4).astype(float)
    big = type(world)(**{**world.__dict__, "arrival_user": users.astype(np.intp),
                         "profiles": np.zeros((T, 384), dtype=np.float32),
                         "hist_len": np.zeros(T, dtype=np.intp)})
    agents = make_agents(["vw_squarecb", "river_ucb", "random"], big, 0)
    out = run_seed(big, SeedStream(0, cands, R), agents, k=1, progress=False)
    late = slice(T // 2, T)
    vw = out["runs"]["vw_squarecb"].reward[late].mean()
    river = out["runs"]["river_ucb"].reward[late].mean()
    assert out["runs"]["random"].reward[late].mean() < 0.25
    assert vw > 0.8 and vw > river + 0.2


def test_held_back_items_are_never_candidates_or_history_before_the_midpoint():
    world = _world(n_items=80, n_users=10, per_user=40, holdout=0.25, n_arrivals=300)
    new = world.new_items
    assert new.sum() == 20 and world.release_t == 150 and world.n_arrivals == 300
    s = draw_stream(world, 5, n_candidates=10)
    assert not new[s.cands[: world.release_t]].any()
    assert new[s.cands[world.release_t:]].any()
    for t in range(world.release_t):
        assert not new[world.history(t)].any()
    # After the midpoint new items enter the history as the log likes them.
    assert any(new[world.history(t)].any() for t in range(world.release_t, world.n_arrivals))
    # Candidates' rewards are the user's logged ones.
    u = int(world.arrival_user[0])
    lookup = dict(zip(world.pools[u].tolist(), world.pool_rewards[u].tolist(), strict=True))
    assert s.R[0].tolist() == [lookup[i] for i in s.cands[0].tolist()]


def test_holdout_skips_arrivals_whose_user_cannot_fill_a_candidate_set():
    # min_pool 12 with 15 items rated per user and a third held back: some users fall short.
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(30, 384)).astype(np.float32)
    au = np.repeat(np.arange(8), 15)
    ai = np.concatenate([rng.choice(30, size=15, replace=False) for _ in range(8)])
    order = rng.permutation(au.shape[0])
    au, ai = au[order], ai[order]
    world = build_world([f"m{i}" for i in range(30)], emb, np.zeros(30, bool),
                        [f"u{u}" for u in range(8)], [{}] * 8, au, ai, np.ones(120),
                        holdout=1 / 3, holdout_seed=1, min_pool=12, n_arrivals=40)
    short = {u for u in range(8) if (~world.new_items[world.pools[u]]).sum() < 12}
    assert short and world.skipped > 0 and world.n_arrivals == 40
    assert not set(world.arrival_user[: world.release_t].tolist()) & short
    with pytest.raises(ValueError, match="holdout"):
        build_world(["a"], emb[:1], np.zeros(1, bool), ["u"], [{}], au[:0], ai[:0],
                    np.zeros(0), holdout=1.0)


def test_cold_start_figures_on_a_hand_made_sequence():
    new = np.array([False, True, True, True])
    log = ColdStartLog(new, first_n=3)
    # item 1: 0, 0, 1, 1  -> first click at impression 3; first-3 rewards 0+0+1
    # item 2: 1           -> first click at 1;              first-3 rewards 1
    # item 3: 0, 0, 0, 0, 0 -> censored at 5 impressions;   first-3 rewards 0
    # item 0 is not new and never counts.
    slates = [([0, 1, 2], [1, 0, 1]), ([1, 3], [0, 0]), ([3, 1], [0, 1]), ([1, 3], [1, 0]),
              ([3, 0], [0, 1]), ([3], [0])]
    for items, r in slates:
        log.observe(np.array(items), np.array(r, dtype=float))
    s = log.summary()
    assert s["first_n_reward"] == pytest.approx((1 + 1 + 0) / (3 + 1 + 3))
    assert s["first_n_impressions"] == 7
    assert s["first_click_mean"] == pytest.approx((3 + 1) / 2)
    assert (s["clicked"], s["censored"], s["unshown"], s["new_items"]) == (2, 1, 0, 3)
    assert s["censored_impressions_mean"] == 5.0 and s["impressions"] == 10
    before = log.impressions.copy()
    with pytest.raises(ValueError, match="shape"):
        log.observe(np.array([1, 2]), np.array([1.0]))
    assert np.array_equal(log.impressions, before)
    empty = ColdStartLog(new).summary()
    assert np.isnan(empty["first_n_reward"]) and empty["unshown"] == 3


def test_run_seed_reports_cold_start_only_for_new_items_after_release():
    world = _world(n_items=80, n_users=10, per_user=40, holdout=0.25, n_arrivals=200)
    s = draw_stream(world, 0, n_candidates=10)
    out = run_seed(world, s, make_agents(["random", "popular"], world, 0), k=3, progress=False)
    for name, run in out["runs"].items():
        # Replay the slates' impressions from the recorded per-arrival log of shown rows.
        m = summarize_run(run, out)["cold_start"]
        assert m["new_items"] == 20 and m["impressions"] > 0, name
        assert m["clicked"] + m["censored"] + m["unshown"] == 20
        assert m["new_candidates"] == int(world.new_items[np.unique(s.cands[100:])].sum())
    plain = _world(n_items=80, n_users=10, per_user=40, n_arrivals=50)
    out = run_seed(plain, draw_stream(plain, 0, 10), make_agents(["random"], plain, 0), k=3,
                   progress=False)
    assert summarize_run(out["runs"]["random"], out)["cold_start"] is None


def test_tuning_budget_is_equal_and_the_best_configuration_wins():
    world = _world(n_items=50, n_users=8, per_user=30, n_arrivals=400)
    hyper = {"linucb": {"alpha": 0.1, "lam": 1.0}}
    vw = {"vw_squarecb": VW_CONFIGS["vw_squarecb"]}
    with pytest.raises(ValueError, match="equal budgets"):
        tune(world, {"linucb": [{"alpha": 0.1}], "vw_squarecb": ["-l 0.1", "-l 1"]}, hyper, vw)
    grids = {"linucb": [{"alpha": 0.01}, {"alpha": 3.0}],
             "vw_squarecb": ["-l 0.05", "-l 1 --gamma_scale 100"]}
    h, v, log = tune(world, grids, hyper, vw, tune_events=200, k=2, n_candidates=10)
    assert log["events"] == 200 and log["configs_per_family"] == 2
    for fam in grids:
        means = log[fam]["mean_reward"]
        assert log[fam]["best"] == grids[fam][int(np.argmax(means))]
    assert h["linucb"]["alpha"] == log["linucb"]["best"]["alpha"]
    assert v["vw_squarecb"] == f"{vw['vw_squarecb']} {log['vw_squarecb']['best']}"
    assert hyper == {"linucb": {"alpha": 0.1, "lam": 1.0}}  # inputs untouched
    with pytest.raises(TypeError):
        apply_config("vw_squarecb", {"l": 1}, hyper, vw)
