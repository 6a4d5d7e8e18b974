"""Signed, versioned, self-describing policy snapshots — no pickle.

Byte layout (integers little-endian u64)::

    b"FSNAPv1\\n" | len(H) | len(P) | H (UTF-8 JSON header) | P (safetensors) |
    sha256(all before) | HMAC-SHA256(key, all before incl. the checksum)

The header names the algorithm, hyper-parameters, feature space, dim,
counts, snapshot version, created_at (UTC ISO 8601), the RNG bit-generator
state (plain JSON) and the dtype/shape of every array; the arrays themselves
(float64) travel in the safetensors payload, so the round trip is bit-exact.

Loading checks, in order: framing — magic and the two lengths against the
total size, so truncated or padded input is a :class:`SnapshotFormatError` —, checksum
(:class:`ChecksumError` — corruption), signature (:class:`SignatureError` —
tampering or wrong key), then the content (:class:`SnapshotFormatError`).
Nothing is parsed before the checksum and signature verify, and any failure
is a :class:`SnapshotError` subclass.

References
----------
RFC 2104 (HMAC); FIPS 180-4 (SHA-256); safetensors format
(https://github.com/huggingface/safetensors).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import struct
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from bandits.base import Policy, PolicyState
from bandits.exceptions import (
    BanditsError,
    ChecksumError,
    FeatureSpaceMismatch,
    InvalidInput,
    SignatureError,
    SnapshotFormatError,
)
from bandits.registry import policy_from_state

__all__ = ["FORMAT", "MAGIC", "dump_snapshot", "load_snapshot", "read_snapshot"]

MAGIC = b"FSNAPv1\n"
FORMAT = 1
_U64 = struct.Struct("<Q")
_DIGEST = 32
_MIN_LEN = len(MAGIC) + 2 * _U64.size + 2 * _DIGEST


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes | bytearray | memoryview) or len(key) == 0:
        raise InvalidInput("key must be non-empty bytes")
    return bytes(key)


def dump_snapshot(policy: Policy, key: bytes, version: int,
                  created_at: dt.datetime | None = None) -> bytes:
    """Serialise ``policy`` as signed snapshot bytes (see module docstring).

    Example
    -------
    >>> from bandits.linucb import LinUCB
    >>> p = LinUCB(dim=3, feature_space="fs")
    >>> data = dump_snapshot(p, key=b"k", version=7)
    >>> q = load_snapshot(data, key=b"k")
    >>> q.version, q.dim, q.feature_space
    (7, 3, 'fs')
    """
    key = _check_key(key)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise InvalidInput(f"version must be a non-negative int, got {version!r}")
    when = created_at or dt.datetime.now(dt.UTC)
    state = policy.snapshot()
    arrays = {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in state.arrays.items()}
    payload = st_save(arrays) if arrays else st_save({"_empty": np.zeros(0)})
    header = {
        "format": FORMAT,
        "algorithm": state.algorithm,
        "version": version,
        "created_at": when.isoformat(),
        "feature_space": state.feature_space,
        "dim": state.dim,
        "hyper": state.hyper,
        "counts": {"n_updates": state.n_updates,
                   "n_observations": int(state.params.get("n", state.n_updates))},
        "params": state.params,
        "rng": state.rng,
        "arrays": {k: {"dtype": "float64", "shape": list(v.shape)} for k, v in arrays.items()},
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }
    hbytes = json.dumps(header, sort_keys=True, allow_nan=False).encode("utf-8")
    body = b"".join([MAGIC, _U64.pack(len(hbytes)), _U64.pack(len(payload)), hbytes, payload])
    body += hashlib.sha256(body).digest()
    return body + hmac.new(key, body, hashlib.sha256).digest()


def _verify(data: bytes, key: bytes) -> bytes:
    """Checks framing, checksum and signature; returns the signed content."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SnapshotFormatError(f"snapshot must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _MIN_LEN or not data.startswith(MAGIC):
        raise SnapshotFormatError("not a fairstream snapshot (bad magic or too short)")
    hlen, plen = _U64.unpack_from(data, len(MAGIC)), _U64.unpack_from(data, len(MAGIC) + 8)
    if _MIN_LEN + hlen[0] + plen[0] != len(data):
        raise SnapshotFormatError(f"snapshot is {len(data)} bytes but its framing says "
                                  f"{_MIN_LEN + hlen[0] + plen[0]} (truncated or padded)")
    body, checksum, signature = data[:-64], data[-64:-32], data[-32:]
    if not hmac.compare_digest(hashlib.sha256(body).digest(), checksum):
        raise ChecksumError("snapshot checksum mismatch (corrupted)")
    expected = hmac.new(key, data[:-32], hashlib.sha256).digest()
    if not hmac.compare_digest(expected, signature):
        raise SignatureError("snapshot signature invalid (tampered, or wrong key)")
    return body


def _parse(body: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    (hlen,) = _U64.unpack_from(body, len(MAGIC))
    pos = len(MAGIC) + 2 * _U64.size
    header = json.loads(body[pos:pos + hlen].decode("utf-8"))
    payload = body[pos + hlen:]
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise SnapshotFormatError(f"unsupported snapshot format {header.get('format')!r}")
    if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
        raise ChecksumError("payload checksum does not match the header")
    arrays = dict(st_load(payload))
    arrays.pop("_empty", None)
    for name, spec in header["arrays"].items():
        arr = arrays.get(name)
        if arr is None or str(arr.dtype) != spec["dtype"] or list(arr.shape) != spec["shape"]:
            raise SnapshotFormatError(f"array {name!r} missing or not as the header describes")
    return header, arrays


def read_snapshot(data: bytes, key: bytes) -> tuple[dict[str, Any], Policy]:
    """Verify and decode; returns ``(header, policy)``. Raises SnapshotError subclasses."""
    key = _check_key(key)
    body = _verify(data, key)
    try:
        header, arrays = _parse(body)
        state = PolicyState(
            algorithm=header["algorithm"], dim=header["dim"],
            feature_space=header["feature_space"], hyper=header["hyper"],
            n_updates=header["counts"]["n_updates"], rng=header["rng"],
            params=header["params"], arrays=arrays)
        policy = policy_from_state(state)
        policy.version = int(header["version"])
    except (ValueError, KeyError, TypeError, AttributeError, struct.error, SafetensorError,
            BanditsError) as exc:
        if isinstance(exc, ChecksumError | SnapshotFormatError):
            raise
        raise SnapshotFormatError(f"snapshot content unreadable: {exc}") from exc
    policy.snapshot_header = header
    return header, policy


def load_snapshot(data: bytes, key: bytes, *, feature_space: str | None = None) -> Policy:
    """Verify and decode a snapshot into a policy (``policy.version`` is set).

    With ``feature_space`` given, a snapshot of another feature space raises
    :class:`FeatureSpaceMismatch` (a consumer must never mix feature spaces).
    """
    _, policy = read_snapshot(data, key)
    if feature_space is not None and policy.feature_space != feature_space:
        raise FeatureSpaceMismatch(feature_space, policy.feature_space)
    return policy
