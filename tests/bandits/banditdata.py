"""Helpers shared by the bandits tests: seeded random streams, closed-form ridge.

Named uniquely (not conftest) so it cannot collide with helpers of other test packages.
"""

from __future__ import annotations

import numpy as np


def make_stream(seed: int, m: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(m, d))
    theta = rng.normal(size=d)
    r = X @ theta + 0.1 * rng.normal(size=m)
    return X, r


def ridge(X: np.ndarray, r: np.ndarray, lam: float) -> np.ndarray:
    d = X.shape[1]
    return np.linalg.solve(lam * np.eye(d) + X.T @ X, X.T @ r)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))
