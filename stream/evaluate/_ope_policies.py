"""Evaluation policies for OPE: trained on logged rows, queried for per-position distributions.

Every policy is turned into an OBP-style action distribution
``π(a | x, pos)`` of shape (n_contexts, n_items, len_list): the probability
that item ``a`` is shown at position ``pos`` of the policy's slate in context
``x``. For a ranking by scores s (ties to the lower item index) with an ε-mix
of uniformly random ordered slates, in closed form::

    π(a | x, pos) = (1 − ε)·1[a = rank_pos(s)] + ε / n_items

Thompson sampling has no closed form: the distribution is the frequency of
each item at each rank over ``mc_samples`` posterior draws of θ̃.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bandits import EpsilonGreedy, LinearTS, LinUCB, MostPopular, Policy, UniformRandom
from stream.evaluate._ope_data import Contexts, OBDFeatures

__all__ = ["POLICY_NAMES", "action_distributions", "train_policies"]

#: name -> (label in reports, factory(dim, seed))
_FACTORIES: dict[str, tuple[str, Callable[[int, int], Policy]]] = {
    "linucb": ("LinUCB (α=0.5)",
               lambda d, s: LinUCB(d, alpha=0.5, feature_space="obd", seed=s)),
    "ts": ("linear TS (v=0.3, 200 draws)",
           lambda d, s: LinearTS(d, v=0.3, mc_samples=200, feature_space="obd", seed=s)),
    "egreedy": ("ε-greedy (ε=0.1)",
                lambda d, s: EpsilonGreedy(d, epsilon=0.1, feature_space="obd", seed=s)),
    "popular": ("most-popular", lambda d, s: MostPopular(d, feature_space="obd", seed=s)),
    "random": ("uniform random", lambda d, s: UniformRandom(d, feature_space="obd", seed=s)),
}
POLICY_NAMES = (*_FACTORIES, "vw")
LABELS = {name: label for name, (label, _) in _FACTORIES.items()} | {
    "vw": "VW --cb_adf -q ui (ε-greedy 0.1 ranking)"}


def train_policies(names: tuple[str, ...], X: np.ndarray, reward: np.ndarray,
                   items: np.ndarray, seed: int) -> dict[str, Policy]:
    """Fit the fairstream policies on logged rows φ(x_i, a_i) with their clicks."""
    out = {}
    for name in names:
        if name == "vw":
            continue
        policy = _FACTORIES[name][1](X.shape[1], seed)
        policy.update(X, reward.astype(np.float64), item_ids=[str(i) for i in items])
        out[name] = policy
    return out


def ranked_distribution(scores: np.ndarray, k: int, epsilon: float = 0.0) -> np.ndarray:
    """(n_items, k) per-position distribution of an ε-mixed top-k ranking of ``scores``.

    >>> ranked_distribution(np.array([0.1, 0.9, 0.5]), k=2).tolist()
    [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
    """
    n = scores.shape[0]
    top = np.argsort(-scores, kind="stable")[:k]
    dist = np.full((n, k), epsilon / n)
    dist[top, np.arange(k)] += 1.0 - epsilon
    return dist


def _ts_distribution(policy: LinearTS, X: np.ndarray, k: int,
                     rng: np.random.Generator) -> np.ndarray:
    theta = policy.sample_theta(policy.mc_samples, rng=rng)        # (M, d)
    S = X @ theta.T                                                 # (n_items, M)
    ranks = np.argsort(-S, axis=0, kind="stable")[:k]               # (k, M) item per position
    n = X.shape[0]
    dist = np.zeros((n, k))
    for pos in range(k):
        dist[:, pos] = np.bincount(ranks[pos], minlength=n) / theta.shape[0]
    return dist


def action_distributions(policies: dict[str, Policy], feats: OBDFeatures, ctx: Contexts,
                         k: int, seed: int) -> dict[str, np.ndarray]:
    """π(a | x, pos) for every policy and distinct context: (n_ctx, n_items, k)."""
    rng = np.random.default_rng(seed)
    n_ctx, n = len(ctx.users), feats.n_items
    ids = [str(i) for i in range(n)]
    out = {name: np.zeros((n_ctx, n, k)) for name in policies}
    for c in range(n_ctx):
        X = feats.all_items(ctx.users[c], ctx.affinity[c])
        for name, policy in policies.items():
            if isinstance(policy, UniformRandom):
                out[name][c] = 1.0 / n
            elif isinstance(policy, LinearTS):
                out[name][c] = _ts_distribution(policy, X, k, rng)
            else:
                eps = getattr(policy, "epsilon", 0.0)
                out[name][c] = ranked_distribution(policy.score(X, item_ids=ids), k, eps)
    return out


# -- Vowpal Wabbit ------------------------------------------------------------------------------

def _vw_shared(user: np.ndarray) -> str:
    return "shared |u " + " ".join(f"u{j}_{v[:12]}" for j, v in enumerate(user))


class VWPolicy:
    """VW contextual bandit with action-dependent features, as an ε-greedy ranking.

    ``--cb_adf -q ui``: a cost regressor per (user, item) pair with user×item
    quadratic features, trained with IPS-labelled costs ``−click`` on the
    logged item of every row; ranking by predicted cost, ε-mixed as above.
    """

    def __init__(self, item_cat: np.ndarray, item_num: np.ndarray, epsilon: float = 0.1,
                 seed: int = 0) -> None:
        import vowpalwabbit

        self.epsilon = epsilon
        self._vw = vowpalwabbit.Workspace(f"--cb_adf -q ui --quiet --random_seed {seed}")
        self._items = [
            "|i " + " ".join(f"i{j}_{v[:12]}" for j, v in enumerate(cat)) + f" num:{num:.6f}"
            for cat, num in zip(item_cat, item_num, strict=True)]

    def _actions(self, affinity: np.ndarray) -> list[str]:
        return [f"{line} aff:{a:g}" for line, a in zip(self._items, affinity, strict=True)]

    def learn(self, users: np.ndarray, affinity: np.ndarray, items: np.ndarray,
              reward: np.ndarray, propensity: np.ndarray) -> None:
        for u, aff, a, r, p in zip(users, affinity, items, reward, propensity, strict=True):
            actions = self._actions(aff)
            actions[a] = f"0:{-float(r):g}:{p:g} {actions[a]}"
            self._vw.learn([_vw_shared(u), *actions])

    def distribution(self, ctx: Contexts, k: int) -> np.ndarray:
        out = []
        for u, aff in zip(ctx.users, ctx.affinity, strict=True):
            costs = np.asarray(self._vw.predict([_vw_shared(u), *self._actions(aff)]))
            out.append(ranked_distribution(-costs, k, self.epsilon))
        return np.stack(out)

    def close(self) -> None:
        self._vw.finish()
