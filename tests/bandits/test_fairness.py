"""Fairness metrics against hand-computed values; the exposure controller works."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bandits import (
    ExposureController,
    FairnessTracker,
    InvalidInput,
    LinUCB,
    popularity_groups,
    position_weights,
)

W2 = 1 / math.log2(3)  # exposure weight of position 2
W3 = 0.5               # 1/log2(4)


def test_position_weights():
    np.testing.assert_allclose(position_weights(3), [1.0, W2, W3])


def test_metrics_equal_hand_computed_values_window_and_cumulative():
    t = FairnessTracker(window=2)
    t.observe(["tail", "head", "head"], [1.0, 0.0, 1.0], user_groups=["gender=F", "age=25-34"])
    t.observe(["head", "head"], [0.0, 0.0], user_groups="gender=M")
    t.observe(["head", "tail"], [1.0, 1.0], user_groups=["gender=M"])
    c = t.cumulative_report()
    e_tail = 1 + W2
    e_total = (1 + W2 + W3) + (1 + W2) + (1 + W2)
    assert c.slates == 3
    assert c.exposure_share["tail"] == pytest.approx(e_tail / e_total, rel=1e-12)
    assert c.exposure_share["head"] == pytest.approx(1 - e_tail / e_total, rel=1e-12)
    assert c.merit_share == pytest.approx({"tail": 0.5, "head": 0.5})
    assert c.exposure_merit_gap["tail"] == pytest.approx(e_tail / e_total - 0.5)
    assert c.disparity == pytest.approx(abs(e_tail / e_total - 0.5), rel=1e-12)
    assert c.reward_rate == pytest.approx({"gender=F": 2 / 3, "age=25-34": 2 / 3,
                                           "gender=M": 2 / 4})
    assert c.reward_rate_gap == pytest.approx(2 / 3 - 1 / 2)
    assert c.reward_rate_ratio == pytest.approx((1 / 2) / (2 / 3))
    w = t.window_report()  # last two slates only; gender=F / age groups evicted
    assert w.slates == 2
    assert w.exposure_share["tail"] == pytest.approx(W2 / (2 * (1 + W2)), rel=1e-12)
    assert w.merit_share == pytest.approx({"head": 0.5, "tail": 0.5})
    assert w.reward_rate == pytest.approx({"gender=M": 0.5})
    assert math.isnan(w.reward_rate_gap) and math.isnan(w.reward_rate_ratio)


def test_no_reward_gives_nan_merit_and_window_stays_exact_over_many_evictions():
    t = FairnessTracker(window=3)
    t.observe(["a"], [0.0], user_groups=["u"])
    r = t.window_report()
    assert r.exposure_share == {"a": 1.0} and math.isnan(r.merit_share["a"])
    assert math.isnan(r.disparity)
    rng = np.random.default_rng(0)
    slates = [(list(rng.choice(["a", "b", "c"], size=3)), rng.random(3)) for _ in range(50)]
    for g, rew in slates:
        t.observe(g, rew, user_groups=["u"])
    ref = FairnessTracker(window=3)
    for g, rew in slates[-3:]:
        ref.observe(g, rew, user_groups=["u"])
    assert t.window_report().exposure_share == pytest.approx(ref.window_report().exposure_share)
    assert t.window_report().merit_share == pytest.approx(ref.window_report().merit_share)
    assert t.cumulative_report().slates == 51
    with pytest.raises(InvalidInput):
        t.observe(["a", "b"], [1.0])


@pytest.mark.parametrize("window", [1, 4, 1000])
def test_a_batch_equals_the_same_slates_one_by_one(window):
    rng = np.random.default_rng(window)
    groups = ["head", "tail", "provider-7", "new"]
    slates = [(list(rng.choice(groups[:2 + i // 20], size=rng.integers(1, 6))),
               rng.random(6), list(rng.choice(["gender=F", "gender=M", "age=18-24"], 2)))
              for i in range(60)]
    slates = [(g, r[:len(g)].round(), u) for g, r, u in slates]
    one, many = FairnessTracker(window=window), FairnessTracker(window=window)
    for g, r, u in slates:
        one.observe(g, r, user_groups=u)
    for chunk in (slates[:7], slates[7:8], slates[8:]):  # a batch longer than the window too
        sums = many.observe_batch(*zip(*chunk, strict=True))
        # The batch's own totals, against sums written out slate by slate.
        exposure, rewards, shown = {}, {}, {}
        for g, r, u in chunk:
            for j, group in enumerate(g):
                exposure[group] = exposure.get(group, 0.0) + 1 / math.log2(j + 2)
            for label in dict.fromkeys(u):
                rewards[label] = rewards.get(label, 0.0) + float(np.sum(r))
                shown[label] = shown.get(label, 0.0) + len(g)
        assert sums.exposure == pytest.approx(exposure, rel=1e-12)
        assert sums.rewards == pytest.approx(rewards, rel=1e-12, abs=1e-12)
        assert sums.shown == shown
    for report in ("window_report", "cumulative_report"):
        a, b = getattr(one, report)(), getattr(many, report)()
        assert a.slates == b.slates
        for name in ("exposure_share", "merit_share", "reward_rate"):
            assert getattr(a, name).keys() == getattr(b, name).keys()
            assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-12, nan_ok=True)
        assert a.disparity == pytest.approx(b.disparity, rel=1e-12, nan_ok=True)
    with pytest.raises(InvalidInput, match="slate 1"):
        many.observe_batch([["a"], ["a", "b"]], [[1.0], [1.0]], [[], []])
    with pytest.raises(InvalidInput, match="one rewards"):
        many.observe_batch([["a"]], [], [[]])


def test_popularity_groups_head_is_top_20_percent():
    counts = {f"i{j}": c for j, c in enumerate([5, 100, 7, 0, 3, 50, 2, 2, 9, 1])}
    groups = popularity_groups(counts)
    assert sorted(i for i, g in groups.items() if g == "head") == ["i1", "i5"]
    assert sum(g == "tail" for g in groups.values()) == 8
    assert popularity_groups({}) == {}
    assert popularity_groups({"x": 1}) == {"x": "head"}


def test_controller_off_gives_zero_bonus_and_hand_computed_deficit():
    c = ExposureController(lam=0.0)
    c.observe(["h", "t"], shown=[0], merit=np.array([1.0, 3.0]))
    assert c.deficit == pytest.approx({"h": 0.25 - 1.0, "t": 0.75})
    np.testing.assert_array_equal(c.bonus(["h", "t", "new"]), [0.0, 0.0, 0.0])
    c2 = ExposureController(lam=2.0)
    c2.observe(["h", "t"], shown=[0], merit=np.array([1.0, 3.0]))
    np.testing.assert_allclose(c2.bonus(["h", "t", "new"]), [0.0, 1.5, 0.0])


def test_candidates_target_deficit_is_candidate_share_minus_exposure():
    """Closed form: D_g = Σ_requests (n_g / n) · Σ_j w_j − E_g, whatever the merits say."""
    c = ExposureController(lam=1.0, target="candidates")
    w = position_weights(2)
    c.observe(["h", "h", "t", "t"], shown=[0, 1], merit=np.array([5.0, 5.0, 0.0, 0.0]))
    c.observe(["h", "t", "t", "t"], shown=[1, 0], merit=np.array([0.0, 9.0, 9.0, 9.0]))
    want_t = (0.5 + 0.75) * w.sum() - w[0]  # the tail was shown once, first
    assert c.deficit == pytest.approx({"t": want_t, "h": -want_t})
    np.testing.assert_allclose(c.bonus(["h", "t"]), [0.0, want_t])
    merit = ExposureController(lam=1.0)  # the merit target follows the merits instead
    merit.observe(["h", "h", "t", "t"], shown=[0, 1], merit=np.array([5.0, 5.0, 0.0, 0.0]))
    assert merit.deficit == pytest.approx({"h": 0.0, "t": 0.0})


def test_controller_rejects_an_unknown_target():
    with pytest.raises(InvalidInput, match="target"):
        ExposureController(lam=1.0, target="popularity")


def test_the_candidates_target_needs_no_merit_and_the_merit_target_does():
    with_merit, without = (ExposureController(1.0, target="candidates") for _ in range(2))
    with_merit.observe(["h", "t", "t"], shown=[0], merit=np.array([9.0, 0.0, 0.0]))
    without.observe(["h", "t", "t"], shown=[0])
    assert not without.needs_merit and without.deficit == with_merit.deficit
    fair = ExposureController(1.0)
    assert fair.needs_merit
    with pytest.raises(InvalidInput, match="merit"):
        fair.observe(["h", "t"], shown=[0])


def run_stream(lam: float, rounds: int = 300, seed: int = 0):
    """Two groups, 10 candidates each; head items are somewhat more relevant.

    Returns (disparity of exposure vs true merit, mean expected reward per slate).
    """
    rng = np.random.default_rng(seed)
    d, n_half, k = 4, 10, 3
    true_theta = np.array([1.0, 0.5, 0.0, 0.0])
    policy = LinUCB(dim=d, alpha=0.1, feature_space="fs", seed=seed)
    ctl = ExposureController(lam=lam)
    groups = ["head"] * n_half + ["tail"] * n_half
    exposure = {"head": 0.0, "tail": 0.0}
    merit = {"head": 0.0, "tail": 0.0}
    reward = 0.0
    w = position_weights(k)
    for _ in range(rounds):
        X = rng.uniform(0, 1, size=(2 * n_half, d))
        X[:n_half, 0] += 0.3  # head a bit more relevant on average
        rel = np.clip(X @ true_theta / 2.0, 0, 1)
        s = policy.select(X, k=k, rng=rng, bonus=ctl.bonus(groups))
        ctl.observe(groups, s.indices, merit=np.clip(policy.predict(X), 0, None))
        for g in ("head", "tail"):
            merit[g] += rel[[i for i in range(2 * n_half) if groups[i] == g]].sum()
        for j, i in enumerate(s.indices):
            exposure[groups[i]] += w[j]
        reward += rel[s.indices].sum()
        clicks = (rng.random(k) < rel[s.indices]).astype(float)
        policy.update(X[s.indices], clicks)
    e_tail = exposure["tail"] / sum(exposure.values())
    m_tail = merit["tail"] / sum(merit.values())
    return abs(e_tail - m_tail), reward / rounds


def test_exposure_controller_reduces_disparity_at_bounded_reward_cost():
    base_disp, base_reward = run_stream(lam=0.0)
    fair_disp, fair_reward = run_stream(lam=0.05)
    assert base_disp > 0.2  # unconstrained ranking over-exposes the head
    assert fair_disp < 0.25 * base_disp
    assert fair_reward >= 0.9 * base_reward
