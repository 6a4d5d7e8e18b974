"""Closed-loop MovieLens simulation: the live policy chooses, real ratings answer.

Users arrive in rating-timestamp order. Each arrival gets a candidate set
drawn from items that user really rated (so the feedback to any slate is
known: rating ≥ 4 is a click), the current policy picks a slate of ``k``, and
the impression and its clicks are published as events for the worker to learn
from — the loop closes through Kafka. The uniform-random policy is scored on
the very same candidate sets (in expectation: the mean reward of a random
slate is the candidates' mean reward), so the comparison carries no sampling
noise of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from bandits import position_weights
from learners import user_groups
from stream.data import MovieLens
from stream.events import Click, Event, Impression

#: recommend(user_id, user_attrs, candidates, k, rng, now) -> (items, propensities, version)
Recommend = Callable[[str, dict[str, Any], Sequence[str], int, np.random.Generator, float],
                     tuple[list[str], np.ndarray, str]]


@dataclass
class SimulationResult:
    arrivals: int = 0
    reward_sum: float = 0.0
    random_reward_sum: float = 0.0
    shown: int = 0
    group_reward: dict[str, list[float]] = field(default_factory=dict)  # label -> [sum, shown]
    exposure: dict[str, float] = field(default_factory=dict)            # item group -> exposure
    candidate_tail: float = 0.0   # tail items among candidates (count)
    candidates: int = 0
    curve: list[tuple[int, float, float]] = field(default_factory=list)  # (arrivals, mean, random)
    per_arrival: list[tuple[float, float]] = field(default_factory=list)  # (reward, random)

    @property
    def mean_reward(self) -> float:
        return self.reward_sum / max(self.shown, 1)

    @property
    def random_mean_reward(self) -> float:
        return self.random_reward_sum / max(self.arrivals, 1)

    @property
    def tail_exposure_share(self) -> float:
        total = sum(self.exposure.values())
        return self.exposure.get("tail", 0.0) / total if total else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "arrivals": self.arrivals,
            "mean_reward": self.mean_reward,
            "random_mean_reward": self.random_mean_reward,
            "reward_by_user_group": {g: s / n for g, (s, n) in sorted(self.group_reward.items())},
            "tail_exposure_share": self.tail_exposure_share,
            "tail_candidate_share": self.candidate_tail / max(self.candidates, 1),
            "reward_by_quarter": self._quarters(0),
            "random_by_quarter": self._quarters(1),
        }

    def _quarters(self, column: int) -> list[float]:
        """Mean reward per shown item in each quarter of the run (is it improving?)."""
        values = np.array([row[column] for row in self.per_arrival])
        return [float(part.mean()) for part in np.array_split(values, 4) if len(part)]


class MovieLensSimulator:
    """Turns MovieLens ratings into arrivals, candidate sets and known feedback."""

    def __init__(self, ml: MovieLens, item_group: dict[str, str], n_candidates: int = 20,
                 k: int = 5, seed: int = 0) -> None:
        if k >= n_candidates:
            raise ValueError(f"k ({k}) must be smaller than n_candidates ({n_candidates})")
        self.ml, self.k, self.n_candidates = ml, k, n_candidates
        self.item_group = item_group
        self.rng = np.random.default_rng(seed)
        r = ml.ratings
        self.rated: dict[str, dict[str, float]] = {}
        for u, i, y in zip(r.user_id.tolist(), r.item_id.tolist(), r.rating.tolist(),
                           strict=True):
            self.rated.setdefault(u, {})[i] = y
        self._rated_ids = {u: np.array(sorted(d)) for u, d in self.rated.items()}
        self.users = {str(u): ml.users.attrs(i) for i, u in enumerate(ml.users.user_id.tolist())}

    def run(self, recommend: Recommend, publish: Callable[[Event], None], n_arrivals: int,
            wait_for_learner: Callable[[int], None] | None = None,
            progress: bool = True, curve_every: int = 1000) -> SimulationResult:
        res = SimulationResult()
        r = self.ml.ratings
        n_arrivals = min(n_arrivals, len(r))
        bar = tqdm(total=n_arrivals, unit="arrival", disable=not progress, desc="simulating")
        for i in range(n_arrivals):
            if wait_for_learner is not None:
                wait_for_learner(i)
            user, ts = str(r.user_id[i]), float(r.timestamp[i])
            attrs = self.users[user]
            pool = self._rated_ids[user]
            cands = self.rng.choice(pool, size=min(self.n_candidates, len(pool)), replace=False)
            cands = [str(c) for c in cands]
            items, props, version = recommend(user, attrs, cands, self.k, self.rng, ts)
            truth = self.rated[user]
            rewards = [1.0 if truth[it] >= 4 else 0.0 for it in items]
            request_id = f"sim-{i}"
            publish(Impression(event_id=f"{request_id}-imp", request_id=request_id, ts=ts,
                               user_id=user, items=items, propensities=[float(p) for p in props],
                               policy_version=version, user=attrs))
            for it, y in zip(items, rewards, strict=True):
                if y > 0:
                    publish(Click(event_id=f"{request_id}-{it}", request_id=request_id,
                                  ts=ts + 1.0, user_id=user, item_id=it))
            self._record(res, attrs, cands, items, rewards, truth)
            if (i + 1) % curve_every == 0 or i + 1 == n_arrivals:
                res.curve.append((i + 1, res.mean_reward, res.random_mean_reward))
                bar.set_postfix(reward=f"{res.mean_reward:.3f}",
                                random=f"{res.random_mean_reward:.3f}")
            bar.update(1)
        bar.close()
        return res

    def _record(self, res: SimulationResult, attrs: dict[str, Any], cands: list[str],
                items: list[str], rewards: list[float], truth: dict[str, float]) -> None:
        res.arrivals += 1
        res.reward_sum += sum(rewards)
        res.shown += len(items)
        random_reward = float(np.mean([truth[c] >= 4 for c in cands]))
        res.random_reward_sum += random_reward
        res.per_arrival.append((sum(rewards) / len(items), random_reward))
        for key, value in user_groups(attrs).items():
            acc = res.group_reward.setdefault(f"{key}={value}", [0.0, 0.0])
            acc[0] += sum(rewards)
            acc[1] += len(items)
        for it, weight in zip(items, position_weights(len(items)), strict=True):
            g = self.item_group.get(it, "unknown")
            res.exposure[g] = res.exposure.get(g, 0.0) + float(weight)
        res.candidates += len(cands)
        res.candidate_tail += sum(self.item_group.get(c) == "tail" for c in cands)


def throttle(consumed: Callable[[], int], max_lag: int, timeout_s: float = 120.0
             ) -> Callable[[int], None]:
    """A ``wait_for_learner`` that keeps the simulator at most ``max_lag`` impressions
    ahead of the learner, so the loop stays closed (the policy that chooses has
    seen nearly everything before it)."""

    def wait(i: int) -> None:
        deadline = time.monotonic() + timeout_s
        while i - consumed() > max_lag:
            if time.monotonic() > deadline:
                raise TimeoutError(f"learner stalled: {consumed()} impressions consumed of {i}")
            time.sleep(0.005)

    return wait
