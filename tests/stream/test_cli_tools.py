"""The tools to look inside (``dlq tail``, ``policy show``, ``--version``) and a help text that
is plain and complete."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from kafka import KafkaProducer

from stream.cli import build_parser
from stream.cli_help import parsers
from stream.core.catalog import Catalog
from stream.core.state import LearningState
from stream.kafka.producers import catalog_items
from stream.kafka.topics import ensure_topics
from stream.metrics import Metrics
from stream.worker.deadletter import DeadLetters
from stream.worker.publisher import Publisher


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stream.cli", *args], text=True,
                          capture_output=True, timeout=120, check=False,
                          env={**os.environ, **(env or {})})


def test_every_flag_has_a_description_and_shows_its_default_and_help_is_plain_text():
    root = build_parser()
    for parser in parsers(root):
        text = parser.format_help()
        for marker in ("``", ":class:", ":mod:", ":func:", ":data:"):
            assert marker not in text, (parser.prog, marker)
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction |
                          argparse._SubParsersAction):
                continue
            assert action.help, f"{parser.prog} {action.option_strings or action.dest}"
            flat = " ".join(text.split())
            if action.default not in (None, False) and action.option_strings:
                assert f"{' '.join(action.help.split())} (default: " in flat \
                    or "default" in action.help, (parser.prog, action.dest)
    assert len(parsers(root)) > 20


def test_version():
    done = run("--version")
    assert done.returncode == 0 and done.stdout.startswith("fairstream ")


@pytest.mark.broker
def test_dlq_tail_shows_reasons_sources_and_previews(make_settings):
    settings = make_settings()
    ensure_topics(settings)
    letters = DeadLetters(KafkaProducer(bootstrap_servers=settings.kafka.bootstrap),
                          settings.topics.dlq, max_value_bytes=64)
    letters.send(0, 10, b"u1", b'{"v": 9, "type": "click"}', "unknown_version", "v=9",
                 settings.topics.events)
    letters.send(1, 11, b"u2", b'{"v": 1, "type": "click", "item_id": "zz"}', "unknown_item",
                 "zz is not in the catalog", settings.topics.events)
    letters.send(1, 12, b"u3", b"x" * 500, "oversize", "500 bytes", settings.topics.events)
    letters.settle()
    letters.producer.close()
    env = {"FAIRSTREAM_TOPICS__PREFIX": settings.topics.prefix}
    done = run("dlq", "tail", "--bootstrap", settings.kafka.bootstrap, env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 6
    assert "unknown_item" in lines[2] and f"from {settings.topics.events}/1/11" in lines[2]
    assert "zz is not in the catalog" in lines[2] and '"item_id": "zz"' in lines[3]
    assert '"marker": "too_large"' in lines[5]  # the value the DLQ could not hold
    done = run("dlq", "tail", "--reason", "unknown_version", "-n", "5", "--bootstrap",
               settings.kafka.bootstrap, env=env)
    assert [x.split()[2] for x in done.stdout.splitlines()[::2]] == ["unknown_version"]
    done = run("dlq", "tail", "--reason", "clock_skew", "--bootstrap",
               settings.kafka.bootstrap, env=env)
    assert done.stdout.strip() == f"no dead letters of reason clock_skew on {settings.topics.dlq}"


@pytest.mark.broker
@pytest.mark.model
def test_policy_show_verifies_and_describes_a_published_policy(make_settings, movielens,
                                                                encoder):
    ml_catalog = Catalog(encoder.dim)
    ml_catalog.add(catalog_items(movielens)[:300], encoder)
    settings = make_settings(bandit={"alpha": 0.4},
                             policy={"signing_key": "a-secret-nobody-may-see"})
    ensure_topics(settings)
    state = LearningState.fresh(settings, ml_catalog)
    lock = threading.Lock()
    publisher = Publisher(settings, Metrics(), record_version=lambda v: None)
    publisher.publish(state, lock)  # version 1, no updates
    rng = np.random.default_rng(0)
    rows = rng.integers(0, len(ml_catalog), 50)
    X = state.fmap.transform(None, np.zeros(ml_catalog.embeddings.shape[1]), {},
                             adapted_items=state.adapted_items(rows))
    state.policy.update(X, rng.random(50), item_ids=[ml_catalog.ids[r] for r in rows])
    publisher.publish(state, lock)  # version 2, 50 rows
    publisher.settle()
    publisher.close()
    env = {"FAIRSTREAM_TOPICS__PREFIX": settings.topics.prefix,
           "FAIRSTREAM_KAFKA__GROUP_ID": settings.kafka.group_id,
           "FAIRSTREAM_POLICY__SIGNING_KEY": settings.policy.signing_key}
    boot = ("--bootstrap", settings.kafka.bootstrap)
    done = run("policy", "show", *boot, env=env)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.startswith(f"policy version 2 of group {settings.kafka.group_id}")
    assert "verified: SHA-256 checksum and HMAC-SHA256 signature" in text
    assert f"feature space: {state.fmap.feature_space} (dim 64" in text
    assert "algorithm: hybrid_serving (serving view of hybrid_linucb)" in text
    assert "updates: 50 rows learned" in text and "alpha=0.4" in text
    assert "fairness window:" in text and "exposure disparity" in text
    assert settings.policy.signing_key not in text + done.stderr
    first = run("policy", "show", "--version", "1", *boot, env=env)
    assert "policy version 1 " in first.stdout and "updates: 0 rows" in first.stdout
    missing = run("policy", "show", "--version", "9", *boot, env=env)
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        f"fairstream: error: no policy version 9 of group {settings.kafka.group_id} on "
        f"{settings.topics.policies}; versions there: 1..2 (2)")
    forged = run("policy", "show", *boot,
                 env={**env, "FAIRSTREAM_POLICY__SIGNING_KEY": "another-key"})
    assert forged.returncode == 1
    (line,) = forged.stderr.strip().splitlines()
    assert "policy version 2 does not verify" in line and "signature" in line
    assert "another-key" not in line
