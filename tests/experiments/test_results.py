"""Per-arm results and guardrails against hand-computed values."""

from __future__ import annotations

import math

import pytest

from stream.experiments import Arm, Experiment
from stream.experiments.results import ExperimentResults


def _exp(**kw):
    return Experiment(name="e", arms=[Arm(name="control", share=0.5),
                                      Arm(name="b", share=0.5)], **kw)


def test_reward_exposure_and_disparity_by_hand():
    res = ExperimentResults(_exp())
    res.observe("b", "u1", [1.0, 0.0], ["head", "tail"], ["gender=F", "age=25-34"])
    res.observe("b", "u2", [0.0, 0.0], ["tail", "head"], ["gender=M"])
    arm = res.arms["b"]
    assert arm.reward.n == 2 and arm.reward.mean == 0.25 and arm.shown == 4
    assert arm.by_user_group["gender=F"].mean == 0.5
    assert arm.by_user_group["gender=M"].mean == 0.0
    w2 = 1 / math.log2(3)
    assert arm.exposure == pytest.approx({"head": 1 + w2, "tail": 1 + w2})
    assert arm.merit == {"head": 1.0, "tail": 0.0}
    assert arm.disparity() == pytest.approx(0.5)  # ½(|0.5 − 1| + |0.5 − 0|)
    assert not res.observe("nope", "u", [1.0], ["head"], [])


def test_reward_guardrail_and_no_guardrail_for_equal_arms():
    res = ExperimentResults(_exp(), mixture_sd=0.1)
    for i in range(300):
        res.observe("control", f"c{i}", [float(i % 2)], ["head"], [])
        res.observe("b", f"b{i}", [float(i % 2)], ["head"], [])
    assert res.breaches() == []
    for i in range(300, 1500):
        res.observe("control", f"c{i}", [float(i % 2)], ["head"], [])
        res.observe("b", f"b{i}", [float(i % 5 == 0)], ["head"], [])
    [breach] = res.breaches()
    assert breach.arm == "b" and breach.guardrail == "reward"
    c = res.comparison("b")
    assert c.upper < 0 and c.diff == pytest.approx(res.arms["b"].reward.mean - 0.5)


def test_disparity_guardrail_after_min_impressions():
    res = ExperimentResults(_exp(), disparity_target=0.1, min_impressions=50)

    def show(i):  # b shows head and tail alike while only head items earn reward
        res.observe("control", f"c{i}", [float(i % 2)], ["head"], [])
        res.observe("b", f"b{i}", [0.0], ["tail"], [])
        res.observe("b", f"x{i}", [float(i % 2)], ["head"], [])

    for i in range(24):
        show(i)
    assert res.arms["b"].disparity() == pytest.approx(0.5)  # ½(|½ − 1| + |½ − 0|)
    assert res.breaches() == []  # 48 impressions < min_impressions
    show(24)
    assert [(b.arm, b.guardrail) for b in res.breaches()] == [("b", "disparity")]


def test_history_and_table():
    res = ExperimentResults(_exp())
    for i in range(10):
        res.observe("control", f"c{i}", [1.0], ["head"], [])
        res.observe("b", f"b{i}", [0.0], ["head"], [])
        res.record(float(i))
    assert len(res.history) == 10
    rows = {r["arm"]: r for r in res.table()}
    assert rows["control"]["control"] and rows["b"]["impressions"] == 10
    assert rows["b"]["diff"] == -1.0


def test_state_round_trip_resumes_bit_for_bit():
    """A worker checkpoint carries the results (JSON header + arrays through a real
    checkpoint file): the resumed results, fed the same impressions as the uninterrupted
    ones, agree exactly: means, intervals, running-minimum p-values, history."""
    import json
    import random
    import tempfile
    from pathlib import Path

    from stream.core.checkpoint import Checkpoint, read_checkpoint, write_checkpoint

    rng = random.Random(7)

    def feed(res, n):
        for _ in range(n):
            arm = rng.choice(["control", "b"])
            user = f"u{rng.randrange(300)}"
            rewards = [float(rng.random() < (0.3 if arm == "control" else 0.2))
                       for _ in range(3)]
            res.observe(arm, user, rewards, ["head", "tail", "head"],
                        ["gender=F", f"age={rng.choice(['18-24', '25-34'])}"])

    res = ExperimentResults(_exp(), mixture_sd=0.1, min_users=20)
    feed(res, 2000)
    res.breaches()  # moves the running minimum p-value
    res.record(1.0)
    head, arrays = res.state()
    path = Path(tempfile.mkdtemp()) / "ck.npz"
    write_checkpoint(path, Checkpoint(offsets={0: 1}, header={"experiment": head},
                                      arrays=arrays))
    ck = read_checkpoint(path)
    back = ExperimentResults(_exp(version=2), mixture_sd=0.1, min_users=20)
    assert back.load_state(ck.header["experiment"], ck.arrays)
    state = rng.getstate()
    feed(res, 1500)
    rng.setstate(state)
    feed(back, 1500)
    for r in (res, back):
        r.record(2.0)
    # (as JSON: NaN, control's difference with itself, equals no other NaN)
    assert json.dumps(back.table()) == json.dumps(res.table())
    assert json.dumps(back.history) == json.dumps(res.history)
    assert back.arms["b"].reward.var_of_mean == res.arms["b"].reward.var_of_mean
    assert back.arms["b"].reward.users == res.arms["b"].reward.users
    # Another experiment's state is not taken.
    other = ExperimentResults(Experiment(name="other", arms=[Arm(name="control", share=1.0)]))
    assert not other.load_state(head, arrays)
    assert other.arms["control"].reward.n == 0


def test_an_erased_user_leaves_the_results_as_if_never_counted():
    """Erasure drops the user's per-user sums (where the pseudonym is) and their part of
    the arm's reward moments: the reward figures equal those of the same impressions
    without that user's."""

    def feed(res, skip=()):
        for i in range(600):
            user = f"u{i % 40}"
            if user in skip:
                continue
            arm = "control" if i % 3 else "b"
            res.observe(arm, user, [float(i % 5 == 0), float(i % 7 == 0)], ["head", "tail"],
                        ["gender=F"])

    res, ref = ExperimentResults(_exp(), min_users=5), ExperimentResults(_exp(), min_users=5)
    feed(res)
    feed(ref, skip={"u3", "u17"})
    gone = res.forget(lambda users: {u for u in users if u in ("u3", "u17", "u99")})
    assert gone == ["u17", "u3"]
    assert not res.forget(lambda users: {u for u in users if u == "u3"})  # already gone
    for arm in ("control", "b"):
        got, want = res.arms[arm].reward, ref.arms[arm].reward
        assert (got.n, got.users) == (want.n, want.users)
        assert got.mean == pytest.approx(want.mean, rel=1e-12)
        assert got.var_of_mean == pytest.approx(want.var_of_mean, rel=1e-9)
        assert "u3" not in got.users_held()
    for got, want in zip(res.table(), ref.table(), strict=True):
        assert got["impressions"] == want["impressions"]
        for key in ("reward", "diff", "lower", "upper"):
            assert got[key] == pytest.approx(want[key], rel=1e-9, nan_ok=True)
