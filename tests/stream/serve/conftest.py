"""Shared parts of the serving tests: MovieLens embedded by the real MiniLM, bundles."""

from __future__ import annotations

import time

import pytest

from stream.core.bundle import dump_bundle, load_bundle
from stream.core.catalog import Catalog
from stream.core.state import LearningState
from stream.kafka.producers import catalog_items

#: Catalog size for these tests: enough for real candidates, small enough to embed fast.
N_ITEMS = 300


@pytest.fixture(scope="session")
def ml_items(movielens):
    return catalog_items(movielens)[:N_ITEMS]


@pytest.fixture(scope="session")
def ml_catalog(ml_items, encoder):
    catalog = Catalog(encoder.dim)
    catalog.add(ml_items, encoder)
    return catalog


def make_bundle(settings, catalog, version: int, updates: int = 200) -> bytes:
    """A signed bundle as the worker would publish it (fresh state + some updates)."""
    import numpy as np

    state = LearningState.fresh(settings, catalog)
    rng = np.random.default_rng(version)
    if updates:
        rows = rng.integers(0, len(catalog), updates)
        X = state.fmap.transform(None, np.zeros(catalog.embeddings.shape[1]), {},
                                 adapted_items=state.adapted_items(rows))
        ids = [catalog.ids[r] for r in rows] if state.policy.uses_item_ids else None
        state.policy.update(X, (rng.random(updates) < 0.3).astype(float), item_ids=ids)
    return dump_bundle(state.policy, state.fmap, key=settings.policy.signing_key.encode(),
                       version=version)


def open_bundle(settings, data: bytes):
    return load_bundle(data, key=settings.policy.signing_key.encode(),
                       dim=settings.features.dim)


def wait_for(cond, timeout_s: float, what: str):
    """Poll ``cond`` until it returns something truthy (returned) or ``timeout_s`` passes:
    a bound on a phase the test waits for, never what decides the test."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
