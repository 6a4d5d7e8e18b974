"""Published policies: a signed bundle of the bandit snapshot and the feature map it needs.

What goes to ``fairstream.policies`` (compacted, key = the worker group) is
everything a server needs to score exactly as the worker would: the policy
snapshot (itself signed, see :mod:`bandits.snapshot`) and the adapter weights
(safetensors) that define the feature space, under one more HMAC::

    b"FSBNDL1\\n" | u64 len(H) | H (JSON) | policy | adapter | sha256(all before) |
    HMAC-SHA256(key, all before incl. the checksum)

The header carries version, feature_space, dim, created_at and the two
lengths. Loading verifies framing, checksum and signature before parsing
anything, then checks that the policy's feature space is the adapter's.

>>> from bandits import LinUCB
>>> from learners import Adapter, FeatureMap
>>> import numpy as np
>>> E = np.random.default_rng(0).normal(size=(40, 384))
>>> fmap = FeatureMap(Adapter.from_pca(E, out_dim=FeatureMap.adapter_dim(64), seed=0), dim=64)
>>> policy = LinUCB(dim=64, feature_space=fmap.feature_space)
>>> data = dump_bundle(policy, fmap, key=b"k", version=3)
>>> bundle = load_bundle(data, key=b"k", dim=64)
>>> bundle.version, bundle.feature_space == fmap.feature_space
(3, True)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import struct
from dataclasses import dataclass

from bandits import Policy, SnapshotError, dump_snapshot, load_snapshot
from learners import Adapter, FeatureMap
from stream.core.keys import KeyRing
from stream.exceptions import BundleError

MAGIC = b"FSBNDL1\n"
_U64 = struct.Struct("<Q")
_DIGEST = 32


@dataclass(frozen=True)
class PolicyBundle:
    version: int
    feature_space: str
    created_at: str
    policy: Policy
    fmap: FeatureMap


def dump_bundle(policy: Policy, fmap: FeatureMap, key: bytes, version: int) -> bytes:
    """Sign ``policy`` + ``fmap`` as one bundle. A policy with a serving view (a hybrid)
    is bundled as that view: what scoring needs, not the statistics it learns from."""
    if policy.feature_space != fmap.feature_space:
        raise ValueError(f"policy is in {policy.feature_space}, feature map in "
                         f"{fmap.feature_space}")
    view = getattr(policy, "serving_view", None)
    snap = dump_snapshot(view() if view is not None else policy, key=key, version=version)
    adapter = fmap.adapter.to_bytes()
    header = json.dumps({
        "version": version, "feature_space": fmap.feature_space, "dim": fmap.dim,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "policy_len": len(snap), "adapter_len": len(adapter),
    }).encode()
    body = MAGIC + _U64.pack(len(header)) + header + snap + adapter
    body += hashlib.sha256(body).digest()
    return body + hmac.new(key, body, hashlib.sha256).digest()


def load_bundle(data: bytes, key: bytes | KeyRing, dim: int) -> PolicyBundle:
    """Verify and open a bundle; raises :class:`BundleError` on any failure. With a
    :class:`~stream.core.keys.KeyRing`, any of its accepted keys may have signed it."""
    data = bytes(data)
    if len(data) < len(MAGIC) + _U64.size + 2 * _DIGEST or not data.startswith(MAGIC):
        raise BundleError("format", "not a fairstream policy bundle")
    body, signature = data[:-_DIGEST], data[-_DIGEST:]
    content, checksum = body[:-_DIGEST], body[-_DIGEST:]
    if not hmac.compare_digest(hashlib.sha256(content).digest(), checksum):
        raise BundleError("checksum", "content does not match its SHA-256")
    if isinstance(key, KeyRing):
        found = key.key_for(data)
        if found is None:
            raise BundleError("signature", "HMAC does not verify with any accepted key "
                              "(tampered, or signed with a key this process does not hold)")
        key = found
    if not hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest(), signature):
        raise BundleError("signature", "HMAC does not verify (tampered, or another key)")
    (hlen,) = _U64.unpack_from(content, len(MAGIC))
    start = len(MAGIC) + _U64.size
    try:
        header = json.loads(content[start:start + hlen])
        p0 = start + hlen
        p1 = p0 + header["policy_len"]
        if p1 + header["adapter_len"] != len(content):
            raise BundleError("format", "section lengths do not add up")
        if header["dim"] != dim:
            raise BundleError("format", f"bundle has dim {header['dim']}, this process {dim}")
        fmap = FeatureMap(Adapter.from_bytes(content[p1:]), dim=dim)
        policy = load_snapshot(content[p0:p1], key=key, feature_space=fmap.feature_space)
    except SnapshotError as exc:
        raise BundleError("policy", str(exc)) from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError("format", str(exc)) from exc
    return PolicyBundle(version=int(header["version"]), feature_space=fmap.feature_space,
                        created_at=header["created_at"], policy=policy, fmap=fmap)
