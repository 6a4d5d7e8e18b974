"""Session-wide real parts: one embedded Kafka-protocol broker, one MiniLM encoder,
MovieLens-100K from the project's own data cache."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from stream import data
from stream.settings import Settings, load_settings

_ids = itertools.count()


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """One Tansu broker for the whole session (its consumer-group join is slow)."""
    from stream.kafka.broker import EmbeddedBroker

    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as b:
        yield b


@pytest.fixture(scope="session")
def data_cache() -> str:
    """The data cache `make test` filled with `fairstream data fetch`."""
    cache = load_settings(env={k: v for k, v in os.environ.items()
                               if k.startswith("FAIRSTREAM_DATA__")}).data.cache_dir
    data.fetch(cache, ("ml100k", "obd"))
    return cache


@pytest.fixture(scope="session")
def movielens(data_cache):
    return data.load_movielens(data_cache)


@pytest.fixture(scope="session")
def embedding_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("embeddings")


@pytest.fixture(scope="session")
def encoder(embedding_cache):
    """The real all-MiniLM-L6-v2, loaded once per session."""
    from learners import Encoder

    return Encoder(cache_dir=embedding_cache, device="cpu")


@pytest.fixture
def make_settings(broker, data_cache, embedding_cache, tmp_path):
    """Settings on the session broker with a topic namespace of the test's own."""

    def make(**sections) -> Settings:
        n = next(_ids)
        base = Settings().replace(
            kafka={"bootstrap": broker.bootstrap, "events_partitions": 2,
                   "group_id": f"test-workers-{n}", "session_timeout_ms": 6000},
            topics={"prefix": f"test{n}"},
            data={"cache_dir": data_cache},
            model={"device": "cpu", "embedding_cache": str(embedding_cache)},
            worker={"checkpoint_path": str(tmp_path / f"ckpt-{n}.npz"), "metrics_port": 0,
                    "checkpoint_every_s": 1.0, "poll_timeout_ms": 100},
            # Background fine-tunes land at wall-clock moments; tests that compare exact
            # statistics run without them, and the fine-tune tests turn them on.
            finetune={"enabled": False},
            # Not the built-in key: `fairstream worker` / `serve` processes refuse that one.
            policy={"signing_key": "fairstream-test-signing-key"},
            privacy={"pseudonym_key": "fairstream-test-pseudonym-key"},
        )
        return base.replace(**sections) if sections else base

    return make


def _assert_same_policy(a, b, rtol: float = 1e-9) -> None:
    """Two policies learnt the same rows: update counts, the shared statistics and, for
    policies with per-item terms, every item's block (matched by id)."""
    import numpy as np

    assert a.algorithm == b.algorithm and a.n_updates == b.n_updates > 0
    sa, sb = a.stats, b.stats
    np.testing.assert_allclose(sa.xtx, sb.xtx, rtol=rtol, atol=1e-9)
    np.testing.assert_allclose(sa.xty, sb.xty, rtol=rtol, atol=1e-9)
    if hasattr(sa, "item_ids"):
        assert sorted(sa.item_ids) == sorted(sb.item_ids)
        order = {i: j for j, i in enumerate(sb.item_ids)}
        idx = [order[i] for i in sa.item_ids]
        np.testing.assert_allclose(sa.item_xz, sb.item_xz[idx], rtol=rtol, atol=1e-9)
        np.testing.assert_allclose(sa.item_zr, sb.item_zr[idx], rtol=rtol, atol=1e-9)
        np.testing.assert_array_equal(sa.item_n, sb.item_n[idx])
        np.testing.assert_allclose(a.beta, b.beta, rtol=1e-7, atol=1e-10)


@pytest.fixture(scope="session")
def same_policy():
    """``same_policy(a, b)``: assert two policies learnt the same rows (any algorithm)."""
    return _assert_same_policy
