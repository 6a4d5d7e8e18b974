"""Signing keys: a ring that verifies with old and new, the refusal of the built-in key,
and keys that never show (no broker)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from bandits.exceptions import SignatureError
from stream.core.bundle import dump_bundle, load_bundle
from stream.core.catalog import Catalog
from stream.core.keys import KeyRing, refuse_dev_key, run_key
from stream.core.state import LearningState
from stream.events import CatalogItem
from stream.exceptions import BundleError, ConfigError
from stream.settings import DEV_SIGNING_KEY, Settings

OLD, NEW = "old-key-0123456789abcdef", "new-key-fedcba9876543210"


class _Random:
    """An encoder stand-in: these tests need a catalog, not meaningful embeddings."""

    dim = 384

    def embed(self, texts):
        return np.random.default_rng(len(texts)).normal(size=(len(texts), 384))


@pytest.fixture(scope="module")
def state() -> LearningState:
    catalog = Catalog()
    catalog.add([CatalogItem(item_id=str(i), text=f"film {i}") for i in range(40)], _Random())
    return LearningState.fresh(Settings().replace(policy={"signing_key": OLD}), catalog)


def _ring(signing: str, *verify: str) -> KeyRing:
    return KeyRing.from_settings(
        Settings().replace(policy={"signing_key": signing, "verify_keys": ",".join(verify)})
        .policy)


def test_a_ring_opens_bundles_of_each_accepted_key_and_no_other(state):
    old = dump_bundle(state.policy, state.fmap, key=OLD.encode(), version=1)
    new = dump_bundle(state.policy, state.fmap, key=NEW.encode(), version=2)
    rotating = _ring(OLD, NEW)  # step 1: servers hold old + new
    assert [load_bundle(b, key=rotating, dim=64).version for b in (old, new)] == [1, 2]
    retired = _ring(NEW)        # step 3: the old key is gone
    assert load_bundle(new, key=retired, dim=64).version == 2
    with pytest.raises(BundleError) as info:
        load_bundle(old, key=retired, dim=64)
    assert info.value.reason == "signature"
    # A single key as bytes still works as before (the bench and the tests use it).
    assert load_bundle(old, key=OLD.encode(), dim=64).version == 1


def test_a_checkpoint_signed_with_the_old_key_opens_while_the_old_key_is_accepted(state):
    ck = state.to_checkpoint()  # signed with OLD
    rotated = Settings().replace(policy={"signing_key": NEW, "verify_keys": OLD})
    restored = LearningState.from_checkpoint(rotated, state.catalog, ck)
    assert restored.policy.n_updates == state.policy.n_updates
    # Its next checkpoint is signed with the new key: the old one can then be retired.
    retired = Settings().replace(policy={"signing_key": NEW})
    LearningState.from_checkpoint(retired, state.catalog, restored.to_checkpoint())
    with pytest.raises(SignatureError):
        LearningState.from_checkpoint(retired, state.catalog, ck)


def test_the_built_in_key_is_refused_as_signing_or_verifying_key():
    with pytest.raises(ConfigError, match="FAIRSTREAM_POLICY__SIGNING_KEY"):
        refuse_dev_key(Settings(), "fairstream worker")
    with pytest.raises(ConfigError):
        refuse_dev_key(Settings().replace(policy={"signing_key": NEW,
                                                  "verify_keys": DEV_SIGNING_KEY}), "x")
    refuse_dev_key(Settings().replace(policy={"signing_key": NEW, "verify_keys": OLD}), "x")
    # Benches that start processes get a key of their own; a real one is kept.
    assert run_key(Settings()).policy.signing_key != DEV_SIGNING_KEY
    assert run_key(Settings().replace(policy={"signing_key": NEW})).policy.signing_key == NEW


def test_keys_never_show_in_a_ring_or_a_bundle(state):
    ring = _ring(NEW, OLD)
    assert NEW not in repr(ring) and OLD not in repr(ring) and NEW not in str(ring)
    data = dump_bundle(state.policy, state.fmap, key=NEW.encode(), version=3)
    assert NEW.encode() not in data
    bundle = load_bundle(data, key=ring, dim=64)
    assert NEW not in repr(bundle.policy) and NEW not in bundle.created_at


@pytest.mark.parametrize("command", ["worker", "serve"])
def test_worker_and_server_refuse_the_built_in_key_in_one_line(command):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAIRSTREAM_")}
    # A broker nobody listens on: without the refusal the command would try to reach it.
    env["FAIRSTREAM_KAFKA__BOOTSTRAP"] = "127.0.0.1:1"
    done = subprocess.run([sys.executable, "-m", "stream.cli", command], text=True, env=env,
                          capture_output=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fairstream: error:"), done.stderr[-2000:]
    assert "built-in development signing key" in lines[0]
    assert "export FAIRSTREAM_POLICY__SIGNING_KEY=$(openssl rand -hex 32)" in lines[0]
