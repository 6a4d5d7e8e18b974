"""Slates of k items and the propensity of every shown item.

A slate is an ordered list of candidate indices, best first. Every decision
returns ``P(item i is shown anywhere in the slate)`` for the shown items
(and for all candidates), so the impressions it logs support off-policy
evaluation (IPS / DR estimators).

Rules
-----
* **Top-k** (LinUCB, ε-greedy, most-popular): the k highest scores, ties
  broken by the lower candidate index. Deterministic, so ``p = 1``.
* **ε-mix of top-k**: with probability ε the whole slate is a uniformly
  random ordered k-subset of the n candidates, otherwise top-k. The marginal
  propensity is, in closed form::

      p_i = (1 − ε)·1[i ∈ topk] + ε·k/n

  (never 0 when ε > 0, and Σ_i p_i = k).
* **Uniform**: ``p_i = k/n``.
* **Sampled (Thompson)**: ``θ̃ ~ N(θ, v²A⁻¹)``, slate = top-k of ``Xθ̃``.
  ``p_i`` has no closed form; it is estimated from M further independent
  draws, ``p̂_i = c_i/M`` (c_i = draws whose top-k contains i). The estimate
  is unbiased with standard error ``sqrt(p_i(1−p_i)/M) ≤ 1/(2√M)``, reported
  per item (plug-in ``sqrt(p̂(1−p̂)/M)``) in ``Slate.propensity_se``. A shown
  item that none of the M draws contained gets the floor ``1/M`` (rare for
  sensible M; noted so IPS weights stay finite).

References
----------
Li, Chu, Langford, Wang (2011). Unbiased offline evaluation of
contextual-bandit-based news article recommendation algorithms. WSDM.
Saito, Aihara, Matsutani, Narita (2021). Open Bandit Dataset and Pipeline. NeurIPS D&B.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Slate", "sampled_slate", "topk_slate", "uniform_slate"]

_MC_BLOCK = 1 << 21  # candidate×draw scores held in memory at once


@dataclass(frozen=True, eq=False)
class Slate:
    """One decision: shown indices (best first) with their propensities.

    Attributes
    ----------
    indices : (k',) intp, k' = min(k, n), ranked best first.
    propensities : (k',) float64, P(item shown in the slate) for each index.
    scores : (k',) float64, the score each shown item was ranked by (including any bonus;
        for Thompson sampling the sampled score).
    candidate_propensities : (n,) float64, P(shown) for every candidate; sums to k'.
    propensity_se : (k',) float64, standard error of each propensity (0 when exact).
    method : "topk", "epsilon-topk", "uniform" or "thompson-mc".
    explored : True when the ε branch (uniform slate) was taken.

    Example
    -------
    >>> import numpy as np
    >>> s = topk_slate(np.array([0.1, 0.9, 0.5]), k=2)
    >>> s.indices.tolist(), s.propensities.tolist()
    ([1, 2], [1.0, 1.0])
    """

    indices: np.ndarray
    propensities: np.ndarray
    scores: np.ndarray
    candidate_propensities: np.ndarray
    propensity_se: np.ndarray
    method: str
    explored: bool = False

    @property
    def k(self) -> int:
        return int(self.indices.shape[0])

    def __len__(self) -> int:
        return self.k

    def __repr__(self) -> str:
        return (f"Slate(method={self.method!r}, indices={self.indices.tolist()}, "
                f"propensities={np.round(self.propensities, 4).tolist()})")


def _ranked_topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, best first, ties to the lower index."""
    order = np.argsort(-scores, kind="stable")
    return order[:k].astype(np.intp)


def topk_slate(scores: np.ndarray, k: int, epsilon: float = 0.0,
               rng: np.random.Generator | None = None) -> Slate:
    """Top-k slate, optionally ε-mixed with a uniform random slate (closed-form propensities)."""
    n = scores.shape[0]
    kk = min(k, n)
    top = _ranked_topk(scores, kk)
    in_top = np.zeros(n, dtype=bool)
    in_top[top] = True
    if epsilon <= 0.0 or n == 0:
        cand = in_top.astype(np.float64)
        return Slate(top, cand[top], scores[top], cand, np.zeros(kk), "topk")
    if rng is None:
        raise ValueError("an rng is needed when epsilon > 0")
    cand = (1.0 - epsilon) * in_top + epsilon * kk / n
    explored = bool(rng.random() < epsilon)
    idx = rng.permutation(n)[:kk].astype(np.intp) if explored else top
    return Slate(idx, cand[idx], scores[idx], cand, np.zeros(kk), "epsilon-topk", explored)


def uniform_slate(scores: np.ndarray, k: int, rng: np.random.Generator) -> Slate:
    """A uniformly random ordered k-subset; ``p_i = k/n``."""
    n = scores.shape[0]
    kk = min(k, n)
    idx = rng.permutation(n)[:kk].astype(np.intp)
    cand = np.full(n, kk / n if n else 0.0)
    return Slate(idx, cand[idx], scores[idx], cand, np.zeros(kk), "uniform", True)


def mc_inclusion(sample_scores, n: int, k: int, mc_samples: int) -> np.ndarray:
    """Fraction of ``mc_samples`` draws whose top-k contains each candidate.

    ``sample_scores(m)`` returns an (n, m) array of m independent score draws.
    Work is done in blocks so memory stays at about ``_MC_BLOCK`` floats.
    """
    counts = np.zeros(n, dtype=np.int64)
    block = max(1, _MC_BLOCK // max(n, 1))
    done = 0
    while done < mc_samples:
        m = min(block, mc_samples - done)
        S = sample_scores(m)
        top = np.argpartition(-S, k - 1, axis=0)[:k]  # (k, m), each column k distinct rows
        counts += np.bincount(top.ravel(), minlength=n)
        done += m
    return counts / float(mc_samples)


def sampled_slate(shown_scores: np.ndarray, k: int, sample_scores, mc_samples: int) -> Slate:
    """Slate = top-k of one sampled score vector; propensities by Monte-Carlo (see module doc)."""
    n = shown_scores.shape[0]
    kk = min(k, n)
    idx = _ranked_topk(shown_scores, kk)
    if kk == n:  # everything is shown with certainty
        cand = np.ones(n)
        return Slate(idx, cand[idx], shown_scores[idx], cand, np.zeros(kk), "thompson-mc")
    cand = mc_inclusion(sample_scores, n, kk, mc_samples)
    se = np.sqrt(cand * (1.0 - cand) / mc_samples)
    props = np.maximum(cand[idx], 1.0 / mc_samples)
    return Slate(idx, props, shown_scores[idx], cand, se[idx], "thompson-mc")


class TopKSelect:
    """Mixin for score-ranking policies: the slate is the top ``k`` of score (+ bonus),
    ε-mixed with a uniform slate (:func:`topk_slate`, with its closed-form propensities).
    Needs ``_score(X, item_ids)`` and an ``epsilon`` attribute."""

    epsilon: float

    def _select(self, X: np.ndarray, k: int, rng: np.random.Generator,
                bonus: np.ndarray | None, item_ids: list[str] | None) -> Slate:
        s = self._score(X, item_ids)
        if bonus is not None:
            s = s + bonus
        return topk_slate(s, k, self.epsilon, rng)
