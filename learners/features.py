"""Feature map φ(user, item) and canonical user groups."""

from __future__ import annotations

import bisect
import functools
import hashlib
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from learners.adapter import Adapter

GENDERS = ("M", "F")
AGE_BUCKETS = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
_AGE_LOWER = (0, 18, 25, 35, 45, 50, 56)
N_ATTR = len(GENDERS) + len(AGE_BUCKETS)
_ADAPT_BLOCK = 1024  # rows per block in FeatureMap.adapt
UNKNOWN = "unknown"
LAYOUT_VERSION = "phi-v1"


def gender_code(value: Any) -> int:
    """Index into :data:`GENDERS`, or -1 when missing or unrecognised."""
    if isinstance(value, str):
        v = value.strip().upper()
        if v in ("M", "MALE"):
            return 0
        if v in ("F", "FEMALE"):
            return 1
    return -1


def age_code(value: Any) -> int:
    """Index into :data:`AGE_BUCKETS` (from an age or a bucket label), or -1."""
    if isinstance(value, str):
        v = value.strip()
        if v in AGE_BUCKETS:
            return AGE_BUCKETS.index(v)
        try:
            value = float(v)
        except ValueError:
            return -1
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return -1
    age = float(value)
    if not math.isfinite(age) or age < 0 or age > 130:
        return -1
    # bisect, not np.searchsorted: this runs once per event on the worker's hot path.
    return bisect.bisect_right(_AGE_LOWER, age) - 1


def user_groups(attrs: Mapping[str, Any] | None) -> dict[str, str]:
    """Canonical fairness-group labels of a user; ``"unknown"`` where missing.

    >>> user_groups({"gender": "F", "age": 24})
    {'gender': 'F', 'age': '18-24'}
    >>> user_groups({"age": "56+"})
    {'gender': 'unknown', 'age': '56+'}
    """
    attrs = attrs or {}
    g, a = gender_code(attrs.get("gender")), age_code(attrs.get("age"))
    return {
        "gender": GENDERS[g] if g >= 0 else UNKNOWN,
        "age": AGE_BUCKETS[a] if a >= 0 else UNKNOWN,
    }


def attr_codes(attrs: Mapping[str, Any] | None) -> tuple[int, int]:
    """``(gender_code, age_code)`` of a user's attributes (-1 = unknown).

    Memoised on the raw values (a worker calls this once per event and sees few
    distinct ones); ``typed``, so ``True`` and ``1`` stay apart.
    """
    attrs = attrs or {}
    gender, age = attrs.get("gender"), attrs.get("age")
    try:
        return _attr_codes(gender, age)
    except TypeError:  # unhashable values
        return gender_code(gender), age_code(age)


@functools.lru_cache(maxsize=4096, typed=True)
def _attr_codes(gender: Any, age: Any) -> tuple[int, int]:
    return gender_code(gender), age_code(age)


def attr_onehot(g: np.ndarray, a: np.ndarray) -> np.ndarray:
    """One-hot rows ``(n, 9)`` for code arrays; code -1 gives an all-zero block."""
    g, a = np.asarray(g), np.asarray(a)
    out = np.zeros((g.shape[0], N_ATTR), dtype=np.float64)
    rows = np.arange(g.shape[0])
    ok = g >= 0
    out[rows[ok], g[ok]] = 1.0
    ok = a >= 0
    out[rows[ok], len(GENDERS) + a[ok]] = 1.0
    return out


def block_widths(dim: int) -> tuple[int, int, int]:
    """Columns of the (item, profile, interaction) blocks for a total ``dim``.

    ``dim = item + profile + interaction + 9 attributes + 1 bias``; profile and
    interaction get ``k = (dim - 10) // 3`` each and the item block the rest.
    """
    free = dim - N_ATTR - 1
    k = free // 3
    if k < 1:
        raise ValueError(f"feature dim must be >= {N_ATTR + 1 + 3}, got {dim}")
    return free - 2 * k, k, k


def context_columns(dim: int) -> list[int]:
    """Columns of φ that describe the user alone: the attribute one-hots and the bias.

    A hybrid bandit's per-item terms act on these (``z`` in Li et al. 2010): each
    item learns its own offset per user group, beside the shared model.

    >>> context_columns(64)
    [54, 55, 56, 57, 58, 59, 60, 61, 62, 63]
    """
    block_widths(dim)  # validates dim
    return list(range(dim - N_ATTR - 1, dim))


class FeatureMap:
    """φ(user, item) with exactly ``dim`` columns, over a frozen snapshot of an adapter.

    ``φ = [a(e)[:k_i], a(p)[:k], a(e)[:k]⊙a(p)[:k], onehot(gender), onehot(age), 1]``
    where ``a`` is the adapter, ``e`` the frozen item embedding and ``p`` the
    frozen user profile; the adapter needs at least
    :meth:`adapter_dim` outputs (extra outputs are ignored). The adapter's
    weights are copied into numpy at construction, so φ costs a couple of small
    matmuls and later changes to the adapter object do not leak in;
    ``feature_space`` hashes those weights with the layout, so it changes
    whenever the adapter does.

    >>> from learners.adapter import Adapter
    >>> rng = np.random.default_rng(0)
    >>> E = rng.normal(size=(50, 384)); E /= np.linalg.norm(E, axis=1, keepdims=True)
    >>> fmap = FeatureMap(Adapter.from_pca(E, out_dim=FeatureMap.adapter_dim(64)), dim=64)
    >>> X = fmap.transform(E[:20], np.zeros(384), {"gender": "F", "age": 24})
    >>> X.shape, X.dtype, fmap.dim
    ((20, 64), dtype('float64'), 64)
    """

    def __init__(self, adapter: Adapter, dim: int = 64) -> None:
        self.dim = int(dim)
        self.k_item, self.k_profile, self.k_inter = block_widths(self.dim)
        if adapter.out_dim < self.k_item:
            raise ValueError(
                f"FeatureMap(dim={self.dim}) needs an adapter with out_dim >= {self.k_item} "
                f"(FeatureMap.adapter_dim({self.dim})), got {adapter.out_dim}"
            )
        self.adapter = adapter
        self.in_dim = adapter.in_dim
        self._params = adapter.numpy_params(n_out=self.k_item)
        digest = hashlib.sha256(
            f"{LAYOUT_VERSION}|{self.dim}|".encode() + adapter.to_bytes()
        ).hexdigest()
        self.feature_space = "fs-" + digest[:12]
        self._attr_cache: dict[tuple[int, int], np.ndarray] = {}

    @staticmethod
    def adapter_dim(dim: int = 64) -> int:
        """Adapter ``out_dim`` that uses every output at feature ``dim``."""
        return block_widths(dim)[0]

    def __repr__(self) -> str:
        return (
            f"FeatureMap(dim={self.dim}, feature_space={self.feature_space!r}, "
            f"blocks=(item={self.k_item}, profile={self.k_profile}, "
            f"interaction={self.k_inter}, attrs={N_ATTR}, bias=1))"
        )

    def adapt(self, emb: np.ndarray) -> np.ndarray:
        """Adapted embeddings ``(n, k_item)`` (a precomputable catalog table).

        Rows go through in blocks of ``_ADAPT_BLOCK``: the float64 copy of a
        block stays in cache, where one copy of a whole worker batch (thousands
        of 384-d rows) cost more in page faults than the product (13.6 → 3.6 ms
        for 6,000 rows). Each row's result is the same either way.
        """
        w, b, w1, b1, w2 = self._params
        emb = np.asarray(emb)
        if emb.ndim == 1:
            return self.adapt(emb[None, :])[0]
        out = np.empty((emb.shape[0], w.shape[1]))
        for start in range(0, emb.shape[0], _ADAPT_BLOCK):
            x = np.asarray(emb[start:start + _ADAPT_BLOCK], dtype=np.float64)
            block = out[start:start + _ADAPT_BLOCK]
            np.matmul(x, w, out=block)
            block += b
            if w1 is not None:
                block += np.maximum(x @ w1 + b1, 0.0) @ w2
        return out

    def _tail(self, g: int, a: int) -> np.ndarray:
        tail = self._attr_cache.get((g, a))
        if tail is None:
            tail = np.zeros(N_ATTR + 1)
            if g >= 0:
                tail[g] = 1.0
            if a >= 0:
                tail[len(GENDERS) + a] = 1.0
            tail[-1] = 1.0
            self._attr_cache[(g, a)] = tail
        return tail

    def transform(
        self,
        item_emb: np.ndarray,
        profile: np.ndarray,
        user_attrs: Mapping[str, Any] | None = None,
        *,
        adapted_items: np.ndarray | None = None,
    ) -> np.ndarray:
        """φ for one user and ``n`` candidate items: ``(n, dim)`` float64.

        Pass ``adapted_items`` (rows of :meth:`adapt`, e.g. from a catalog table
        cached per feature space) to skip re-adapting the items.
        """
        if adapted_items is None:
            item_emb = np.asarray(item_emb)
            if item_emb.ndim == 1:
                item_emb = item_emb[None, :]
            if item_emb.ndim != 2 or item_emb.shape[1] != self.in_dim:
                raise ValueError(
                    f"item_emb must be (n, {self.in_dim}), got {np.shape(item_emb)}"
                )
            ai = self.adapt(item_emb)
        else:
            ai = np.asarray(adapted_items, dtype=np.float64)
            if ai.ndim != 2 or ai.shape[1] != self.k_item:
                raise ValueError(f"adapted_items must be (n, {self.k_item})")
        profile = np.asarray(profile)
        if profile.shape != (self.in_dim,):
            raise ValueError(f"profile must be ({self.in_dim},), got {profile.shape}")
        ap = self.adapt(profile[None, :])[0]
        n, k, ki = ai.shape[0], self.k_profile, self.k_item
        out = np.empty((n, self.dim))
        out[:, :ki] = ai
        out[:, ki:ki + k] = ap[:k]
        np.multiply(ai[:, :k], ap[:k], out=out[:, ki + k:ki + 2 * k])
        out[:, ki + 2 * k:] = self._tail(*attr_codes(user_attrs))
        return out

    def transform_rows(
        self, item_emb: np.ndarray, profiles: np.ndarray, g: np.ndarray, a: np.ndarray
    ) -> np.ndarray:
        """φ for ``n`` (item, user) rows at once, e.g. a replay buffer: ``(n, dim)``."""
        return self.assemble(self.adapt(item_emb), self.adapt(profiles), g, a)

    def assemble(
        self, adapted_items: np.ndarray, adapted_profiles: np.ndarray, g: np.ndarray,
        a: np.ndarray,
    ) -> np.ndarray:
        """φ rows from already adapted items and profiles (one of each per row)."""
        ai, ap, k = adapted_items, adapted_profiles, self.k_profile
        ones = np.ones((ai.shape[0], 1))
        return np.hstack([ai, ap[:, :k], ai[:, :k] * ap[:, :k], attr_onehot(g, a), ones])


def phi_torch(
    adapter: Adapter,
    item_emb: torch.Tensor,
    profiles: torch.Tensor,
    attrs_tail: torch.Tensor,
    dim: int,
    item_offset: torch.Tensor | None = None,
) -> torch.Tensor:
    """Differentiable φ (same layout as :class:`FeatureMap`) for training the adapter.

    ``attrs_tail`` is ``(n, 10)``: the attribute one-hots followed by the bias 1.
    ``item_offset`` ``(n, k_item)``, when given, is added to each adapted item (a
    trainable per-item id embedding, see :func:`learners.training.train_adapter`).
    """
    import torch

    ki, k, _ = block_widths(dim)
    ai = adapter(item_emb)[:, :ki]
    if item_offset is not None:
        ai = ai + item_offset
    ap = adapter(profiles)[:, :k]
    return torch.cat([ai, ap, ai[:, :k] * ap, attrs_tail], dim=1)
