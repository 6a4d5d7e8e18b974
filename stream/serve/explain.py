"""Why an item was recommended: its score split into parts with plain names.

For each item of a slate (``POST /recommend`` with ``"explain": true``)::

    score = content + item_own + exploration + exposure

- ``content``: the shared model on φ(user, item), ``φᵀβ`` (``φᵀθ`` for shared-only
  policies): what the item's embedding, the user's profile and attributes predict.
  ``content_blocks`` splits it over φ's blocks (item embedding, user profile, their
  interaction, gender, age, bias), largest first; they sum to ``content``.
- ``item_own``: the item's own terms, ``zᵀθ_a`` (hybrid policies): what the item's own
  rows taught beyond the shared model; 0 for an item without terms (new or evicted)
  and for shared-only policies. For policies without a shared model (most-popular)
  the whole estimate is here.
- ``exploration``: what the policy adds for uncertainty: ``α·width`` for UCB, the
  posterior draw minus the mean for Thompson sampling.
- ``exposure``: the exposure controller's adjustment (0 when it is off).

``propensity`` is the probability the policy had of showing the item (not a part
of the score). The mean (content + item_own) comes from the policy's ``predict``,
the adjustment from the controller; exploration is what remains of the score,
which for UCB equals ``α·width`` (the tests check it against the widths).
Nothing here runs unless a request asks for it.

>>> import numpy as np
>>> from bandits import LinUCB
>>> p = LinUCB(dim=12, alpha=0.5)
>>> p.update(np.eye(12)[:3], np.array([1.0, 0.0, 1.0]))
>>> X = np.eye(12)[:2]
>>> slate = p.select(X, 2, rng=np.random.default_rng(0))
>>> parts = explain_slate(p, X, slate, ["a", "b"], None, k_item=1, k_profile=1)
>>> [round(e.content + e.item_own + e.exploration + e.exposure - e.score, 12) for e in parts]
[0.0, 0.0]
>>> parts[0].content_blocks[0].name
'item embedding'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import msgspec
import numpy as np

from bandits import predicted_reward
from learners.features import AGE_BUCKETS, GENDERS


def _doc(text: str) -> msgspec.Meta:
    return msgspec.Meta(description=text)


class ScoreBlock(msgspec.Struct):
    """One block of φ and its share of `content`: the sum of φ_j·β_j over its columns."""

    name: Annotated[str, _doc("item embedding, user profile, profile x item, gender, age "
                              "or bias")]
    value: float


class Explanation(msgspec.Struct):
    """An item's score in parts:
    `score = content + item_own + exploration + exposure + recently_shown`."""

    item: str
    score: Annotated[float, _doc("the score the item was ranked by, as in `scores`")]
    content: Annotated[float, _doc(
        "the shared model on φ(user, item): what the embedding, profile and attributes "
        "predict")]
    content_blocks: Annotated[list[ScoreBlock], _doc(
        "`content` split over φ's blocks, largest magnitude first")]
    item_own: Annotated[float, _doc(
        "the item's own terms (hybrid policies): what its own rows taught; 0 without them")]
    item_has_own_terms: bool
    exploration: Annotated[float, _doc(
        "UCB: α·width; Thompson sampling: the posterior draw minus the mean")]
    exposure: Annotated[float, _doc("the exposure controller's adjustment; 0 when it is off")]
    recently_shown: Annotated[float, _doc(
        "the impression discount: minus serve.impression_discount when this server showed "
        "the item to the user lately and it was not clicked; else 0")]
    propensity: Annotated[float, _doc(
        "the probability the policy had of showing the item (not a part of the score)")]


def _blocks(dim: int, k_item: int, k_profile: int) -> list[tuple[str, slice]]:
    at = [0, k_item, k_item + k_profile, k_item + 2 * k_profile]
    g = at[3] + len(GENDERS)
    return [("item embedding", slice(at[0], at[1])), ("user profile", slice(at[1], at[2])),
            ("profile x item", slice(at[2], at[3])), ("gender", slice(at[3], g)),
            ("age", slice(g, g + len(AGE_BUCKETS))), ("bias", slice(dim - 1, dim))]


def _shared(policy: Any) -> np.ndarray | None:
    """The shared model's coefficients: a hybrid's β, a linear policy's θ, else None."""
    for name in ("beta", "theta"):
        coef = getattr(policy, name, None)
        if isinstance(coef, np.ndarray):
            return coef
    coef = getattr(policy, "_beta", None)  # the hybrid serving view keeps β private
    return coef if isinstance(coef, np.ndarray) else None


def explain_slate(policy: Any, X: np.ndarray, slate: Any, ids: Sequence[str],
                  bonus: np.ndarray | None, *, k_item: int, k_profile: int,
                  discount: np.ndarray | None = None) -> list[Explanation]:
    """Parts of each shown item's score. ``X`` and ``ids`` are all candidates (rows of φ),
    ``bonus`` the exposure adjustment per candidate (None: off), ``discount`` the
    impression discount per candidate (None: none); ``k_item`` and ``k_profile`` are the
    feature map's block widths."""
    rows = np.asarray(slate.indices, dtype=np.intp)
    Xs = X[rows]
    shown = [ids[i] for i in rows.tolist()]
    by_id = shown if getattr(policy, "uses_item_ids", False) else None
    mean = np.asarray(predicted_reward(policy, Xs, by_id), dtype=np.float64)
    coef = _shared(policy)
    blocks = _blocks(X.shape[1], k_item, k_profile)
    if coef is None:
        content, per_block = np.zeros(len(rows)), np.zeros((len(rows), 0))
    else:
        per_block = np.stack([Xs[:, sl] @ coef[sl] for _, sl in blocks], axis=1)
        content = Xs @ coef
    own_terms = set(getattr(policy, "item_ids", ()) or ()) if by_id is not None else set()
    exposure = np.zeros(len(rows)) if bonus is None else np.asarray(bonus)[rows]
    recent = np.zeros(len(rows)) if discount is None else np.asarray(discount)[rows]
    out = []
    for j, item in enumerate(shown):
        score = float(slate.scores[j])
        parts = sorted(((name, float(per_block[j, b])) for b, (name, _) in enumerate(blocks)
                        if per_block.shape[1]), key=lambda nv: -abs(nv[1]))
        out.append(Explanation(
            item=item, score=score, content=float(content[j]),
            content_blocks=[ScoreBlock(n, v) for n, v in parts],
            item_own=float(mean[j] - content[j]), item_has_own_terms=item in own_terms,
            exploration=float(score - mean[j] - exposure[j] - recent[j]),
            exposure=float(exposure[j]), recently_shown=float(recent[j]),
            propensity=float(slate.propensities[j])))
    return out
