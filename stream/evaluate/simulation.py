"""In-process, offline closed-loop replay of MovieLens-100K for side-by-side evaluation.

Users arrive in rating-timestamp order. Arrival ``t`` gets ``n`` candidates
drawn (seeded) from the items that user really rated, so the reward of any
slate is known: ``r = 1[rating ≥ 4]``. Every policy sees the same arrival,
the same candidates and the same features φ(user, item), picks a slate of
``k`` and learns from its own slate's rewards at once.

Per arrival and policy::

    reward_t = Σ_{j ∈ slate} r_j            best_t = Σ top-k of r over the candidates
    regret   = Σ_t (best_t − reward_t)      (cumulative, against the best possible slate)

User profiles are the decayed mean of the frozen embeddings of the items the
user *logged* a rating ≥ 4 for before ``t`` (the MovieLens history, not any
policy's clicks), which keeps φ identical for every policy; a policy's own
choices never leak into another's features. The same logged history, as item
rows, is every arrival's ``history`` (what an id-based peer crosses with items).

Cold start: with ``holdout > 0`` a seeded random share of the items is *new*:
they are not candidates before the midpoint arrival ``release_t``, and their
logged ratings before it count in no profile or history. Arrivals before the
midpoint whose user has fewer than ``min_pool`` other rated items are skipped
(they could not fill a candidate set), so the stream still has ``n_arrivals``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from bandits import position_weights
from learners import Adapter, FeatureMap, ProfileStore, user_groups
from learners.features import attr_codes, block_widths
from stream.evaluate.coldstart import ColdStartLog

__all__ = [
    "Agent",
    "Arrival",
    "EvalWorld",
    "PolicyRun",
    "SeedStream",
    "build_world",
    "draw_stream",
    "phi",
    "run_seed",
    "world_from_movielens",
]

HEAD, TAIL = "head", "tail"


@dataclass(frozen=True, eq=False)
class EvalWorld:
    """Seed-independent inputs: catalog, the logged arrival sequence and its profiles.

    ``emb`` (n_items, 384) frozen embeddings; ``tail`` (n_items,) bool popularity
    group; ``arrival_user`` (T,) user index per arrival; ``profiles`` (T, 384)
    float32 profile *before* arrival t; ``pools[u]`` the item rows user u rated
    and ``pool_rewards[u]`` their 0/1 rewards; ``item_meta[i]`` title, year and
    genres (empty when unknown); ``liked[u][:hist_len[t]]`` the logged history of
    arrival t; ``new_items`` the held-back items, candidates from ``release_t`` on;
    ``skipped`` the arrivals dropped because a held-back catalog left too few.
    """

    item_ids: list[str]
    emb: np.ndarray
    tail: np.ndarray
    fmap: FeatureMap
    adapted: np.ndarray
    arrival_user: np.ndarray
    profiles: np.ndarray
    user_ids: list[str]
    user_attrs: list[dict[str, Any]]
    pools: list[np.ndarray]
    pool_rewards: list[np.ndarray]
    item_meta: list[dict[str, Any]] = field(default_factory=list)
    liked: list[np.ndarray] = field(default_factory=list)
    hist_len: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.intp))
    new_items: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    release_t: int = 0
    skipped: int = 0

    def history(self, t: int) -> np.ndarray:
        """Item rows the arriving user logged a rating ≥ 4 for before arrival ``t``."""
        if not self.liked:
            return np.zeros(0, dtype=np.intp)
        return self.liked[int(self.arrival_user[t])][: int(self.hist_len[t])]

    @property
    def n_arrivals(self) -> int:
        return int(self.arrival_user.shape[0])

    @property
    def dim(self) -> int:
        return self.fmap.dim


@dataclass(frozen=True, eq=False)
class SeedStream:
    """One seed's candidate sets ``cands`` (T, n) item rows and their true rewards ``R``."""

    seed: int
    cands: np.ndarray
    R: np.ndarray


@dataclass(frozen=True, eq=False)
class Arrival:
    """What every policy is shown at arrival ``t`` (identical for all of them)."""

    t: int
    user: int
    cands: np.ndarray       # (n,) item rows
    item_ids: list[str]     # (n,) item ids
    X: np.ndarray           # (n, dim) φ in the fixed (PCA) feature space
    profile: np.ndarray     # (384,) frozen-space profile before t
    attrs: dict[str, Any]
    codes: tuple[int, int]  # (gender, age) codes
    groups: list[str]       # (n,) "head" / "tail"
    history: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.intp))


class Agent(Protocol):
    """A competitor in the simulation: choose a slate, then learn from its rewards."""

    name: str

    def select(self, arr: Arrival, k: int, rng: np.random.Generator) -> np.ndarray:
        """Shown candidate indices, best first (``k`` distinct indices)."""

    def learn(self, arr: Arrival, shown: np.ndarray, rewards: np.ndarray) -> None:
        """Learn from the shown indices and their 0/1 rewards."""


def build_world(item_ids: Sequence[str], emb: np.ndarray, tail: np.ndarray,
                user_ids: Sequence[str], user_attrs: Sequence[dict[str, Any]],
                arrival_user: np.ndarray, arrival_item: np.ndarray, arrival_reward: np.ndarray,
                *, dim: int = 64, profile_decay: float = 0.9, seed: int = 0,
                n_arrivals: int | None = None, item_meta: Sequence[dict[str, Any]] = (),
                holdout: float = 0.0, holdout_seed: int = 0,
                min_pool: int = 20) -> EvalWorld:
    """Assemble an :class:`EvalWorld` from plain arrays (MovieLens or synthetic).

    ``arrival_*`` are the logged (user row, item row, 0/1 reward) in time order; the
    candidate pool of a user is every item they have a logged reward for. Only the
    first ``n_arrivals`` (default: all) become arrivals. ``holdout`` (a share of the
    items, drawn with ``holdout_seed``) makes those items new at the midpoint (see
    the module doc).
    """
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    emb = np.asarray(emb, dtype=np.float32)
    adapter = Adapter.from_pca(emb, out_dim=FeatureMap.adapter_dim(dim), seed=seed)
    fmap = FeatureMap(adapter, dim=dim)
    n_users, n_items = len(user_ids), len(item_ids)
    new = np.zeros(n_items, dtype=bool)
    if holdout > 0:
        rng = np.random.default_rng(holdout_seed)
        new[rng.choice(n_items, size=round(holdout * n_items), replace=False)] = True
    store = ProfileStore(emb_dim=emb.shape[1], decay=profile_decay, capacity=max(n_users, 1))
    T = int(arrival_user.shape[0]) if n_arrivals is None else min(n_arrivals,
                                                                    arrival_user.shape[0])
    mid = T // 2 if holdout > 0 else 0
    pool_map: list[dict[int, float]] = [{} for _ in range(n_users)]
    for u, i, r in zip(arrival_user.tolist(), arrival_item.tolist(), arrival_reward.tolist(),
                       strict=True):
        pool_map[u][i] = r
    old_in_pool = [sum(not new[i] for i in d) for d in pool_map]
    profiles = np.zeros((T, emb.shape[1]), dtype=np.float32)
    users = np.zeros(T, dtype=np.intp)
    hist_len = np.zeros(T, dtype=np.intp)
    liked: list[list[int]] = [[] for _ in range(n_users)]
    kept = skipped = 0
    for t, (u, i, r) in enumerate(zip(arrival_user.tolist(), arrival_item.tolist(),
                                      arrival_reward.tolist(), strict=True)):
        if kept < T:
            if kept < mid and old_in_pool[u] < min_pool:
                skipped += 1
            else:
                profiles[kept], users[kept], hist_len[kept] = store.get(u), u, len(liked[u])
                kept += 1
        if new[i] and kept < mid:
            continue  # not released yet: the rating cannot have happened
        store.observe(u, emb[i], r, now=float(t))
        if r > 0:
            liked[u].append(i)
    pools = [np.array(sorted(d), dtype=np.intp) for d in pool_map]
    pool_rewards = [np.array([d[i] for i in sorted(d)], dtype=np.float64) for d in pool_map]
    return EvalWorld(list(map(str, item_ids)), emb, np.asarray(tail, dtype=bool), fmap,
                     fmap.adapt(emb), users[:kept], profiles[:kept],
                     list(map(str, user_ids)), list(user_attrs), pools, pool_rewards,
                     item_meta=list(item_meta),
                     liked=[np.array(x, dtype=np.intp) for x in liked],
                     hist_len=hist_len[:kept], new_items=new, release_t=mid, skipped=skipped)


def world_from_movielens(ml, emb: np.ndarray, item_group: dict[str, str], events: int,
                         *, dim: int = 64, profile_decay: float = 0.9, seed: int = 0,
                         holdout: float = 0.0, holdout_seed: int = 0,
                         min_pool: int = 20) -> EvalWorld:
    """The first ``events`` MovieLens ratings (time order) as arrivals; pools are all ratings."""
    items = ml.items.item_id.tolist()
    item_row = {i: j for j, i in enumerate(items)}
    users = ml.users.user_id.tolist()
    user_row = {u: j for j, u in enumerate(users)}
    r = ml.ratings
    au = np.array([user_row[u] for u in r.user_id.tolist()], dtype=np.intp)
    ai = np.array([item_row[i] for i in r.item_id.tolist()], dtype=np.intp)
    ar = (r.rating >= 4).astype(np.float64)
    tail = np.array([item_group.get(i) == TAIL for i in items])
    it = ml.items
    meta = [{"title": str(it.title[j]), "year": int(it.year[j]), "genres": tuple(it.genres[j])}
            for j in range(len(items))]
    # Pools use every rating of the user (future ones too); arrivals stop at `events`.
    return build_world(items, emb, tail, users, [ml.users.attrs(j) for j in range(len(users))],
                       au, ai, ar, dim=dim, profile_decay=profile_decay, seed=seed,
                       n_arrivals=events, item_meta=meta, holdout=holdout,
                       holdout_seed=holdout_seed, min_pool=min_pool)


def draw_stream(world: EvalWorld, seed: int, n_candidates: int = 20) -> SeedStream:
    """Candidate sets for every arrival, drawn without replacement from the user's pool.

    Before ``world.release_t`` the pool leaves out the held-back (new) items.
    """
    rng = np.random.default_rng(seed)
    T = world.n_arrivals
    cands = np.empty((T, n_candidates), dtype=np.intp)
    R = np.empty((T, n_candidates), dtype=np.float64)
    new = world.new_items
    for t, u in enumerate(world.arrival_user.tolist()):
        pool, rewards = world.pools[u], world.pool_rewards[u]
        if t < world.release_t and new.any():
            old = ~new[pool]
            pool, rewards = pool[old], rewards[old]
        if pool.shape[0] < n_candidates:
            raise ValueError(f"user {world.user_ids[u]} rated {pool.shape[0]} items, "
                             f"fewer than n_candidates={n_candidates}")
        pick = rng.choice(pool.shape[0], size=n_candidates, replace=False)
        cands[t] = pool[pick]
        R[t] = rewards[pick]
    return SeedStream(seed, cands, R)


def phi(adapted_items: np.ndarray, adapted_profile: np.ndarray, codes: tuple[int, int],
        dim: int) -> np.ndarray:
    """φ rows (same layout as :class:`learners.FeatureMap`) from adapted item/profile rows."""
    ki, k, _ = block_widths(dim)
    n = adapted_items.shape[0]
    out = np.empty((n, dim))
    out[:, :ki] = adapted_items[:, :ki]
    out[:, ki:ki + k] = adapted_profile[:k]
    np.multiply(adapted_items[:, :k], adapted_profile[:k], out=out[:, ki + k:ki + 2 * k])
    tail = np.zeros(dim - ki - 2 * k)
    g, a = codes
    if g >= 0:
        tail[g] = 1.0
    if a >= 0:
        tail[2 + a] = 1.0
    tail[-1] = 1.0
    out[:, ki + 2 * k:] = tail
    return out


@dataclass
class PolicyRun:
    """Bookkeeping of one policy on one seed: per-arrival series (filled by :func:`run_seed`).

    ``reward[t]`` slate reward sum, ``tail_weight[t]`` position-weighted exposure of
    the slate's tail items, ``tail_reward[t]`` reward earned by its tail items;
    ``cold`` the new items' impressions (when the world holds items back).
    """

    name: str
    k: int
    reward: np.ndarray
    tail_weight: np.ndarray
    tail_reward: np.ndarray
    seconds: float = 0.0
    cold: ColdStartLog | None = None

    @classmethod
    def empty(cls, name: str, k: int, T: int,
              new_items: np.ndarray | None = None) -> PolicyRun:
        cold = None if new_items is None or not new_items.any() else ColdStartLog(new_items)
        return cls(name, k, np.zeros(T), np.zeros(T), np.zeros(T), cold=cold)


def run_seed(world: EvalWorld, stream: SeedStream, agents: Sequence[Agent], k: int = 5,
             *, progress: bool = True, desc: str = "", position: int = 0) -> dict[str, Any]:
    """Run every agent in lock-step over the seed's stream; returns raw per-agent series.

    Returns ``{"best": (T,) top-k reward sums, "tail_cand": (T,) tail share among
    candidates, "tail_merit": (T,) tail rewards among candidates, "merit": (T,)
    rewards among candidates, "labels": per-arrival user-group labels,
    "new_candidates": new items that were a candidate after release,
    "runs": {name: PolicyRun}}``.
    """
    T, n = stream.cands.shape
    if k >= n:
        raise ValueError(f"k ({k}) must be smaller than the number of candidates ({n})")
    names = [a.name for a in agents]
    if len(set(names)) != len(names):
        raise ValueError(f"agent names must be unique, got {names}")
    runs = {a.name: PolicyRun.empty(a.name, k, T, world.new_items) for a in agents}
    rngs = {a.name: np.random.default_rng([stream.seed, i]) for i, a in enumerate(agents)}
    best = -np.sort(-stream.R, axis=1)[:, :k].sum(axis=1)
    tail_c = world.tail[stream.cands]
    group_names = np.where(world.tail, TAIL, HEAD)
    ap_all = world.fmap.adapt(world.profiles)
    codes_of = [attr_codes(a) for a in world.user_attrs]
    w = position_weights(k)
    bar = tqdm(total=T, unit="arrival", disable=not progress, desc=desc or f"seed {stream.seed}",
               mininterval=1.0, position=position, leave=True)
    clock = dict.fromkeys(names, 0.0)
    for t in range(T):
        u = int(world.arrival_user[t])
        rows = stream.cands[t]
        arr = Arrival(t, u, rows, [world.item_ids[i] for i in rows],
                      phi(world.adapted[rows], ap_all[t], codes_of[u], world.dim),
                      world.profiles[t], world.user_attrs[u], codes_of[u],
                      group_names[rows].tolist(), world.history(t))
        r_t, tail_t = stream.R[t], tail_c[t]
        for agent in agents:
            t0 = time.perf_counter()
            shown = np.asarray(agent.select(arr, k, rngs[agent.name]), dtype=np.intp)
            if shown.shape != (k,) or len(set(shown.tolist())) != k:
                raise ValueError(f"{agent.name} returned an invalid slate {shown.tolist()}")
            rewards = r_t[shown]
            agent.learn(arr, shown, rewards)
            clock[agent.name] += time.perf_counter() - t0
            run = runs[agent.name]
            is_tail = tail_t[shown]
            run.reward[t] = rewards.sum()
            run.tail_weight[t] = w[is_tail].sum()
            run.tail_reward[t] = rewards[is_tail].sum()
            if run.cold is not None:
                run.cold.observe(rows[shown], rewards)
        bar.update(1)
    bar.close()
    for name, secs in clock.items():
        runs[name].seconds = secs
    labels = [[f"{key}={v}" for key, v in user_groups(a).items()] for a in world.user_attrs]
    after = np.unique(stream.cands[world.release_t:])
    new_cands = int(world.new_items[after].sum()) if world.new_items.any() else 0
    return {"best": best, "new_candidates": new_cands, "tail_cand": tail_c.mean(axis=1),
            "tail_merit": (stream.R * tail_c).sum(axis=1), "merit": stream.R.sum(axis=1),
            "labels": [labels[u] for u in world.arrival_user.tolist()], "runs": runs}


def exposure_disparity(run: PolicyRun) -> float:
    """Cumulative exposure/merit disparity over head/tail, as :class:`bandits.FairnessTracker`.

    ``½ Σ_g |e_g − m_g|`` with e the position-weighted exposure share and m the
    share of earned reward (merit) of each item group among shown items.
    """
    total_w = float(position_weights(run.k).sum()) * run.reward.shape[0]
    total_r = float(run.reward.sum())
    if total_r <= 0:
        return float("nan")
    e_tail = float(run.tail_weight.sum()) / total_w
    m_tail = float(run.tail_reward.sum()) / total_r
    return abs(e_tail - m_tail)  # two groups: ½(|Δ_tail| + |Δ_head|) = |Δ_tail|


def summarize_run(run: PolicyRun, seed_out: dict[str, Any]) -> dict[str, Any]:
    """Scalar metrics and curves of one policy on one seed."""
    r = run.reward
    best = seed_out["best"]
    T, k = r.shape[0], run.k
    wk = float(position_weights(k).sum())
    tail_share = float(run.tail_weight.sum()) / (wk * T)
    merit = float(seed_out["merit"].sum())
    tail_merit_share = float(seed_out["tail_merit"].sum()) / merit if merit else float("nan")
    half = T // 2
    groups: dict[str, list[float]] = {}
    for rt, labs in zip(r.tolist(), seed_out["labels"], strict=True):
        for lab in labs:
            acc = groups.setdefault(lab, [0.0, 0.0])
            acc[0] += rt
            acc[1] += k
    return {
        "mean_reward": float(r.sum() / (T * k)),
        "regret": float((best - r).sum()),
        "second_half_mean_reward": float(r[half:].sum() / (max(T - half, 1) * k)),
        "reward_by_user_group": {lab: s / n for lab, (s, n) in sorted(groups.items())},
        "tail_exposure_share": tail_share,
        "tail_candidate_share": float(seed_out["tail_cand"].mean()),
        "tail_merit_share": tail_merit_share,
        "tail_exposure_disparity": abs(tail_share - float(seed_out["tail_cand"].mean())),
        "tail_merit_disparity": abs(tail_share - tail_merit_share),
        "exposure_disparity": exposure_disparity(run),
        "seconds": run.seconds,
        "cold_start": (None if run.cold is None
                       else {**run.cold.summary(),
                             "new_candidates": seed_out.get("new_candidates", 0)}),
        "curves": {
            "cum_reward": np.cumsum(r),
            "cum_regret": np.cumsum(best - r),
            "tail_share": np.cumsum(run.tail_weight) / (wk * np.arange(1, T + 1)),
        },
    }


AgentFactory = Callable[[EvalWorld, int], Agent]
