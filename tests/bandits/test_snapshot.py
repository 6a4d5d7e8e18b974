"""Signed snapshots: bit-exact round trip, tamper / key / format rejection."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from banditdata import make_stream
from hypothesis import given, settings
from hypothesis import strategies as st

from bandits import (
    ChecksumError,
    FeatureSpaceMismatch,
    InvalidInput,
    LinearTS,
    MostPopular,
    SnapshotError,
    SnapshotFormatError,
    dump_snapshot,
    load_snapshot,
    policy_from_config,
    read_snapshot,
)
from bandits.exceptions import SignatureError
from bandits.snapshot import MAGIC

KEY = b"secret"
D = 4


def trained(algorithm: str, **hyper):
    p = policy_from_config(algorithm, dim=D, feature_space="pca-abc123", seed=3, **hyper)
    X, r = make_stream(0, 25, D)
    ids = [f"item{i % 7}" for i in range(25)]
    p.update(X[:5], r[:5], item_ids=ids[:5])
    for i in range(5, 25):
        p.update(X[i:i + 1], r[i:i + 1], item_ids=ids[i:i + 1])
    p.select(np.random.default_rng(1).normal(size=(6, D)), k=2, item_ids=ids[:6])  # uses rng
    return p


ALGOS = [("linucb", {"alpha": 0.3, "epsilon": 0.1, "gamma": 0.99}),
         ("ts", {"v": 0.4, "mc_samples": 64}),
         ("egreedy", {"epsilon": 0.2}),
         ("random", {}),
         ("popular", {"epsilon": 0.05})]


@pytest.mark.parametrize(("algorithm", "hyper"), ALGOS)
def test_round_trip_is_bit_exact(algorithm, hyper):
    p = trained(algorithm, **hyper)
    when = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    data = dump_snapshot(p, key=KEY, version=3, created_at=when)
    header, q = read_snapshot(data, key=KEY)
    assert type(q) is type(p) and q.version == 3
    assert header["algorithm"] == algorithm and header["created_at"] == when.isoformat()
    assert header["dim"] == D and header["feature_space"] == "pca-abc123"
    assert header["counts"]["n_updates"] == 25
    assert q.hyper_parameters() == p.hyper_parameters()
    assert (q.n_updates, q.dim, q.feature_space) == (p.n_updates, p.dim, p.feature_space)
    sp, sq = p.snapshot(), q.snapshot()
    assert sp.params == sq.params and sp.rng == sq.rng
    assert sp.arrays.keys() == sq.arrays.keys()
    for name in sp.arrays:
        assert sp.arrays[name].tobytes() == sq.arrays[name].tobytes(), name
    # identical behaviour afterwards, including the random sequence
    Q = np.random.default_rng(2).normal(size=(8, D))
    ids = [f"item{i}" for i in range(8)]
    assert p.score(Q, item_ids=ids).tobytes() == q.score(Q, item_ids=ids).tobytes()
    for _ in range(3):
        a, b = p.select(Q, k=3, item_ids=ids), q.select(Q, k=3, item_ids=ids)
        assert a.indices.tolist() == b.indices.tolist()
        assert a.propensities.tobytes() == b.propensities.tobytes()
    # re-dumping the restored policy gives the same bytes
    assert dump_snapshot(q, KEY, 3, created_at=when) == dump_snapshot(p, KEY, 3, created_at=when)


def test_ts_restored_continues_the_same_random_sequence():
    p = trained("ts", v=0.5, mc_samples=16)
    q = load_snapshot(dump_snapshot(p, KEY, 1), KEY)
    assert isinstance(q, LinearTS)
    np.testing.assert_array_equal(p.sample_theta(5), q.sample_theta(5))


def test_most_popular_counts_survive():
    p = trained("popular")
    q = load_snapshot(dump_snapshot(p, KEY, 1), KEY)
    assert isinstance(q, MostPopular) and q.counts == p.counts
    assert q.stats.item_counts == p.stats.item_counts


def test_every_tampered_byte_is_rejected():
    data = dump_snapshot(trained("linucb"), KEY, 5)
    kinds = set()
    for pos in range(len(data)):
        bad = bytearray(data)
        bad[pos] ^= 0x01
        with pytest.raises(SnapshotError) as info:
            load_snapshot(bytes(bad), KEY)
        kinds.add(type(info.value))
    assert kinds == {SnapshotFormatError, ChecksumError, SignatureError}


def test_wrong_key_and_signature_tamper_raise_signature_error():
    data = dump_snapshot(trained("egreedy"), KEY, 5)
    with pytest.raises(SignatureError):
        load_snapshot(data, b"other key")
    with pytest.raises(SignatureError):
        load_snapshot(data[:-1] + bytes([data[-1] ^ 0xFF]), KEY)
    with pytest.raises(InvalidInput):
        load_snapshot(data, b"")


def test_truncated_padded_and_garbage_input_are_format_errors():
    data = dump_snapshot(trained("random"), KEY, 5)
    for bad in (data[:-1], data[: len(data) // 2], data[:10], b"", data + b"\0",
                b"not a snapshot at all" * 10, MAGIC + b"\xff" * 100):
        with pytest.raises(SnapshotFormatError):
            load_snapshot(bad, KEY)
    with pytest.raises(SnapshotFormatError):
        load_snapshot("text", KEY)  # type: ignore[arg-type]


def test_feature_space_expectation_is_enforced():
    data = dump_snapshot(trained("linucb"), KEY, 1)
    assert load_snapshot(data, KEY, feature_space="pca-abc123").feature_space == "pca-abc123"
    with pytest.raises(FeatureSpaceMismatch):
        load_snapshot(data, KEY, feature_space="pca-other")


def test_invalid_version_rejected():
    with pytest.raises(InvalidInput):
        dump_snapshot(trained("random"), KEY, -1)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_only_raise_snapshot_errors(blob):
    with pytest.raises(SnapshotError):
        load_snapshot(blob, KEY)
    with pytest.raises(SnapshotError):
        load_snapshot(MAGIC + blob, KEY)


_VALID = dump_snapshot(policy_from_config("linucb", dim=2, feature_space="fs"), KEY, 0)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(_VALID) - 1), st.integers(1, 255))
def test_any_single_byte_change_is_rejected(pos, xor):
    bad = bytearray(_VALID)
    bad[pos] ^= xor
    with pytest.raises(SnapshotError):
        load_snapshot(bytes(bad), KEY)
