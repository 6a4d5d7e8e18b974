import numpy as np

from learners import DriftMonitor


def _bernoulli(rng, p, n):
    return (rng.random(n) < p).astype(float)


def test_flags_abrupt_change_not_stationary():
    rng = np.random.default_rng(7)
    mon = DriftMonitor(delta=0.002)
    before = [mon.update(r, "F") for r in _bernoulli(rng, 0.2, 2000)]
    assert not any(before)
    after = [mon.update(r, "F") for r in _bernoulli(rng, 0.7, 1000)]
    assert any(after)
    first = after.index(True)
    assert first < 200  # detected soon after the change
    assert mon.detections["F"] >= 1 and mon.total_detections >= 1
    assert mon.consume() is True and mon.consume() is False


def test_stationary_stream_has_no_detection():
    rng = np.random.default_rng(11)
    mon = DriftMonitor(delta=0.002)
    for r in _bernoulli(rng, 0.3, 5000):
        mon.update(r, "all")
    assert mon.total_detections == 0
    assert mon.width("all") > 1000


def test_segments_are_separate_and_bounded():
    rng = np.random.default_rng(3)
    mon = DriftMonitor(max_segments=2)
    for r in _bernoulli(rng, 0.2, 1000):
        mon.update(r, "M")
    for r in _bernoulli(rng, 0.2, 500):
        mon.update(r, "F")
    for r in _bernoulli(rng, 0.9, 500):
        mon.update(r, "F")
    assert mon.detections["F"] >= 1 and mon.detections["M"] == 0
    mon.update(1.0, "third")
    mon.update(1.0, "fourth")
    assert set(mon.detections) == {"M", "F", "other"}


def test_update_many_equals_one_by_one():
    rng = np.random.default_rng(7)
    rewards = np.concatenate([rng.binomial(1, 0.2, 3000), rng.binomial(1, 0.8, 3000)])
    one, many = DriftMonitor(delta=0.002), DriftMonitor(delta=0.002)
    for r in rewards:
        one.update(float(r), "gender=F")
    for chunk in np.array_split(rewards, 37):
        many.update_many(chunk.tolist(), "gender=F")
    assert one.detections == many.detections and one.total_detections > 0
    assert one.updates == many.updates == len(rewards)
    assert one.width("gender=F") == many.width("gender=F")
    assert one.consume() and many.consume()
