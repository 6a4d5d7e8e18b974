"""Features and reward model for off-policy evaluation on the Open Bandit Dataset sample.

Feature construction (built from the data itself, nothing learnt)::

    φ(x, a) = [ 1,
                onehot(user_feature_0..3)                 (3 + 5 + 8 + 8 = 24 dims),
                onehot(item_feature_1..3)                 (12 + 21 + 7 = 40 dims),
                z(item_feature_0)                         (1 dim, z-scored over the 80 items),
                affinity(x, a)                            (1 dim, the user-item affinity column),
                onehot(user) ⊗ onehot(item_feature_3)     (24 · 7 = 168 dims, personalisation) ]

Category vocabularies are the sorted distinct values of the random log's
user features and of ``item_context.csv``; a value never seen maps to all
zeros. The context ``x`` of a row is its four hashed user features plus its
affinity row, so a policy's action distribution is computed once per distinct
context (561 of them in the 10,000-row sample).

The reward model ``q̂(x, a, pos)`` is a ridge (linear-probability) regression on
``[φ(x, a), onehot(pos)]`` fitted on the training half and clipped to [0, 1].
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass

import numpy as np

from stream.data import BanditLog, dataset_dir

__all__ = ["ItemContext", "OBDFeatures", "RidgeRewardModel", "load_item_context"]

N_POSITIONS = 3


@dataclass(frozen=True)
class ItemContext:
    """item_context.csv: one numeric and three hashed categorical features per item."""

    numeric: np.ndarray        # (n_items,) float64, item_feature_0
    categorical: np.ndarray    # (n_items, 3) str, item_feature_1..3


def load_item_context(cache_dir: str | os.PathLike[str], policy: str = "random") -> ItemContext:
    path = dataset_dir(cache_dir, "obd") / f"{policy}_item_context.csv"
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    col = {name: i for i, name in enumerate(header)}
    rows.sort(key=lambda r: int(r[col["item_id"]]))
    return ItemContext(
        numeric=np.array([float(r[col["item_feature_0"]]) for r in rows]),
        categorical=np.array([[r[col[f"item_feature_{j}"]] for j in (1, 2, 3)] for r in rows]),
    )


def _onehot(values: np.ndarray, vocab: list[np.ndarray]) -> np.ndarray:
    """(n, Σ|vocab_j|) one-hot of the columns of ``values`` (n, J); unseen values → zeros."""
    n = values.shape[0]
    blocks = []
    for j, voc in enumerate(vocab):
        idx = np.searchsorted(voc, values[:, j])
        idx = np.minimum(idx, len(voc) - 1)
        hit = voc[idx] == values[:, j]
        block = np.zeros((n, len(voc)))
        block[np.arange(n)[hit], idx[hit]] = 1.0
        blocks.append(block)
    return np.hstack(blocks)


class OBDFeatures:
    """φ(x, a) for every (context, item) pair (see module docstring)."""

    def __init__(self, train_users: np.ndarray, items: ItemContext) -> None:
        self.user_vocab = [np.unique(train_users[:, j]) for j in range(train_users.shape[1])]
        item_vocab = [np.unique(items.categorical[:, j]) for j in range(3)]
        self.n_items = items.numeric.shape[0]
        z = (items.numeric - items.numeric.mean()) / (items.numeric.std() or 1.0)
        self._item_cat = _onehot(items.categorical, item_vocab)            # (n_items, 40)
        self.item_numeric = z                                               # (n_items,)
        self._item_num = z[:, None]
        last = len(item_vocab[0]) + len(item_vocab[1])
        self._item_f3 = self._item_cat[:, last:]                            # (n_items, 7)
        self.n_user = sum(len(v) for v in self.user_vocab)
        self.dim = 1 + self.n_user + self._item_cat.shape[1] + 1 + 1 + \
            self.n_user * self._item_f3.shape[1]

    def user_onehot(self, users: np.ndarray) -> np.ndarray:
        return _onehot(users, self.user_vocab)

    def all_items(self, user: np.ndarray, affinity: np.ndarray) -> np.ndarray:
        """φ(x, a) for one context and every item a: (n_items, dim)."""
        return self.rows(np.repeat(user[None, :], self.n_items, axis=0),
                         np.repeat(affinity[None, :], self.n_items, axis=0),
                         np.arange(self.n_items))

    def rows(self, users: np.ndarray, affinity: np.ndarray, items: np.ndarray) -> np.ndarray:
        """φ(x_i, a_i) for n (context, item) pairs: (n, dim)."""
        n = len(items)
        u = self.user_onehot(users)
        aff = affinity[np.arange(n), items][:, None]
        cross = (u[:, :, None] * self._item_f3[items][:, None, :]).reshape(n, -1)
        return np.hstack([np.ones((n, 1)), u, self._item_cat[items], self._item_num[items],
                          aff, cross])


@dataclass(frozen=True)
class Contexts:
    """Distinct contexts of a log and, for each row, the index of its context."""

    users: np.ndarray      # (n_ctx, 4) str
    affinity: np.ndarray   # (n_ctx, n_items)
    row_context: np.ndarray  # (n_rows,) intp


def distinct_contexts(log: BanditLog, rows: np.ndarray) -> Contexts:
    key = np.concatenate([log.user_features[rows], log.affinity[rows].astype(str)], axis=1)
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    sel = rows[first]
    return Contexts(log.user_features[sel], log.affinity[sel], inverse.reshape(-1))


class RidgeRewardModel:
    """q̂(x, a, pos) = clip(wᵀ[φ(x, a), onehot(pos)], 0, 1), w the ridge solution.

    >>> m = RidgeRewardModel(lam=1e-6).fit(np.eye(2), np.array([0, 1]), np.array([0.2, 0.6]))
    >>> m.predict(np.eye(2), np.array([0, 1])).round(3).tolist()
    [0.2, 0.6]
    """

    def __init__(self, lam: float = 1.0) -> None:
        self.lam = float(lam)
        self.w: np.ndarray | None = None

    @staticmethod
    def _design(X: np.ndarray, position: np.ndarray) -> np.ndarray:
        pos = np.zeros((X.shape[0], N_POSITIONS))
        pos[np.arange(X.shape[0]), position] = 1.0
        return np.hstack([X, pos])

    def fit(self, X: np.ndarray, position: np.ndarray, reward: np.ndarray) -> RidgeRewardModel:
        Z = self._design(X, position)
        A = Z.T @ Z + self.lam * np.eye(Z.shape[1])
        self.w = np.linalg.solve(A, Z.T @ reward)
        return self

    def predict(self, X: np.ndarray, position: np.ndarray) -> np.ndarray:
        if self.w is None:
            raise RuntimeError("fit the reward model first")
        return np.clip(self._design(X, position) @ self.w, 0.0, 1.0)
