"""NeuralLinear refit: replay rows in a (new) feature space, and the ridge statistics they give.

References
----------
Riquelme, Tucker, Snoek (2018). Deep Bayesian Bandits Showdown. ICLR.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from learners.features import FeatureMap
from learners.replay import ReplayBuffer, ReplayRows

#: Rows per chunk when a snapshot is mapped into a new space (bounds the temporaries).
REFIT_CHUNK = 4096


def refit_statistics(
    buffer: ReplayBuffer | ReplayRows, fmap: FeatureMap
) -> tuple[np.ndarray, np.ndarray]:
    """``(X, r)``: every buffered row in ``fmap``'s space, to rebuild a bandit from.

    A ridge bandit fed these rows has ``A = λI + XᵀX``, ``b = Xᵀr``.
    """
    rows = buffer.snapshot() if isinstance(buffer, ReplayBuffer) else buffer
    if len(rows) == 0:
        return np.zeros((0, fmap.dim)), np.zeros(0)
    X = fmap.transform_rows(rows.item_emb, rows.profiles, rows.gender, rows.age)
    return X, rows.rewards.astype(np.float64, copy=True)


def ridge_statistics(
    X: np.ndarray, r: np.ndarray, lam: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """``A = λI + XᵀX``, ``b = Xᵀr`` (a ridge / LinUCB / linear-TS bandit's statistics).

    >>> A, b = ridge_statistics(np.array([[1.0, 0.0], [1.0, 2.0]]), np.array([1.0, 0.5]))
    >>> A.tolist(), b.tolist()
    ([[3.0, 2.0], [2.0, 5.0]], [1.5, 1.0])
    """
    X = np.asarray(X, dtype=np.float64)
    return lam * np.eye(X.shape[1]) + X.T @ X, X.T @ np.asarray(r, dtype=np.float64)


def rows_in_space(
    fmap: FeatureMap, rows: ReplayRows, throttle: Callable[[float], None] | None = None
) -> np.ndarray:
    """φ of every snapshot row in ``fmap``'s space, ``(n, dim)`` float64, in chunks
    (``throttle`` is given each chunk's start time: the in-thread fine-tune sleeps there)."""
    n = len(rows)
    if n == 0:
        return np.zeros((0, fmap.dim))
    parts = []
    for lo in range(0, n, REFIT_CHUNK):
        t_chunk = time.perf_counter()
        sl = slice(lo, lo + REFIT_CHUNK)
        parts.append(fmap.transform_rows(rows.item_emb[sl], rows.profiles[sl], rows.gender[sl],
                                         rows.age[sl]))
        if throttle is not None:
            throttle(t_chunk)
    return np.vstack(parts)
