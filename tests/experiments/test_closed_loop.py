"""Experiments in the closed-loop MovieLens simulator (stream.sim.simulator): real users
in rating-time order, real ratings as feedback, impressions and clicks through the
reward join, per-arm results with the always-valid interval, a look after every
``LOOK`` closed impressions.

* Two arms of known, different quality (uniform random slates against slates ranked by
  the items' MovieLens like-rate): the interval separates them with the right sign
  within a bounded number of impressions, and stays separated.
* A/A over 50 seeds (each a different stretch of the stream and a different salt):
  the share of runs in which *any* look excludes 0 stays at or below α = 0.05.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest

from stream.core.join import Pending, RewardJoiner
from stream.data import MovieLens, Ratings
from stream.events import Click, Event, Impression
from stream.experiments import Arm, Experiment, Router
from stream.experiments.results import ExperimentResults
from stream.sim.simulator import MovieLensSimulator

ALPHA, TAU = 0.05, 0.05
#: experiment.min_users' default: with 2 the A/A rate on these stretches was 0.22, with
#: 20 it is 0.02 (the plug-in variance needs users, not impressions)
MIN_USERS = 20
LOOK = 50
#: A slate policy: (candidates, k, rng) -> (items, propensities)
SlatePolicy = Callable[[Sequence[str], int, np.random.Generator], tuple[list[str], list[float]]]


def uniform(cands, k, rng):
    k = min(k, len(cands))  # a user with fewer rated items in a stretch of the stream
    pick = rng.choice(len(cands), size=k, replace=False)
    return [cands[i] for i in pick.tolist()], [k / len(cands)] * k


def ranked_by(score: dict[str, float]) -> SlatePolicy:
    def policy(cands, k, _rng):
        best = sorted(cands, key=lambda c: (-score[c], c))[:k]
        return best, [1.0] * len(best)  # deterministic: each shown item had probability 1

    return policy


def window(ml: MovieLens, start: int, n: int) -> MovieLens:
    r = ml.ratings
    cut = slice(start, start + n)
    return MovieLens(ml.items, ml.users, Ratings(r.user_id[cut], r.item_id[cut],
                                                 r.rating[cut], r.timestamp[cut]))


def run(ml: MovieLens, policies: dict[str, SlatePolicy], salt: str, seed: int,
        arrivals: int, groups: dict[str, str]):
    """Simulate; returns the results and, per look, the control-vs-``b`` comparison."""
    exp = Experiment(name="sim", salt=salt,
                     arms=[Arm(name=n, share=1 / len(policies)) for n in policies])
    router = Router(exp)
    res = ExperimentResults(exp, alpha=ALPHA, mixture_sd=TAU, min_users=MIN_USERS)
    joiner = RewardJoiner(window_s=60.0, weights={"click": 1.0, "purchase": 1.0})
    looks = []
    closed_n = [0]

    def recommend(user, attrs, cands, k, rng, now):
        items, props = policies[router.arm(user)](cands, k, rng)
        return items, np.array(props), "1"

    def count(closed: list[Pending]) -> None:
        for p in closed:
            res.observe(p.arm, p.user_id, p.rewards, [groups.get(i, "tail") for i in p.items],
                        ())
            closed_n[0] += 1
            if closed_n[0] % LOOK == 0:
                looks.append((closed_n[0], res.comparison("b")))

    def publish(event: Event) -> None:
        if isinstance(event, Impression):
            count(joiner.add_impression(0, Pending(
                event.request_id, event.user_id, event.ts, tuple(event.items),
                tuple(event.propensities), event.user, policy_version=event.policy_version,
                experiment="sim", arm=router.arm(event.user_id))))
        else:
            assert isinstance(event, Click)
            count(joiner.add_feedback(0, event.request_id, event.item_id, "click", event.ts,
                                      event.user_id))

    sim = MovieLensSimulator(ml, groups, n_candidates=10, k=3, seed=seed)
    sim.run(recommend, publish, arrivals, progress=False)
    count(joiner.flush())
    looks.append((closed_n[0], res.comparison("b")))
    return res, looks


@pytest.fixture(scope="module")
def like_rate(movielens):
    r = movielens.ratings
    liked, seen = {}, {}
    for item, y in zip(r.item_id.tolist(), r.rating.tolist(), strict=True):
        seen[item] = seen.get(item, 0) + 1
        liked[item] = liked.get(item, 0) + (y >= 4)
    # shrunk towards the overall rate: items rated a few times are not all 0 or 1
    base = sum(liked.values()) / sum(seen.values())
    return {i: (liked[i] + 10 * base) / (seen[i] + 10) for i in seen}


@pytest.fixture(scope="module")
def groups(movielens):
    counts: dict[str, int] = {}
    for item in movielens.ratings.item_id.tolist():
        counts[item] = counts.get(item, 0) + 1
    head = sorted(counts, key=lambda i: -counts[i])[:len(counts) // 5]
    return {i: "head" if i in set(head) else "tail" for i in counts}


def test_two_arms_of_known_quality_are_told_apart(movielens, like_rate, groups):
    res, looks = run(movielens, {"control": uniform, "b": ranked_by(like_rate)},
                     salt="known-quality", seed=0, arrivals=20_000, groups=groups)
    truth = res.arms["b"].reward.mean - res.arms["control"].reward.mean
    assert truth > 0.05  # the ranked arm is the better one, by a known margin
    first = next(n for n, c in looks if c.decided)
    assert all(c.lower > 0 for n, c in looks if n >= first)  # right sign, and it stays
    final = looks[-1][1]
    assert final.lower <= truth <= final.upper
    print(f"\nknown-quality arms: difference {truth:+.4f}, separated (right sign) after "
          f"{first} impressions of {looks[-1][0]}; final interval "
          f"[{final.lower:+.4f}, {final.upper:+.4f}]")
    assert first <= 5_000


def test_a_a_false_positive_rate_is_at_most_nominal(movielens, groups):
    seeds, arrivals = 50, 4000
    positives, sizes = 0, []
    for seed in range(seeds):
        _res, looks = run(window(movielens, 1500 * seed, arrivals),
                         {"control": uniform, "b": uniform},
                         salt=f"aa-{seed}", seed=seed, arrivals=arrivals, groups=groups)
        positives += any(c.decided for _, c in looks)
        sizes.append(len(looks))
    rate = positives / seeds
    print(f"\nA/A: {positives} of {seeds} seeds ever excluded 0 over {min(sizes)}-"
          f"{max(sizes)} looks each: false-positive rate {rate:.3f} (nominal {ALPHA})")
    assert rate <= ALPHA
