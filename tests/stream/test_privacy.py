"""Pseudonyms and minimal attributes at the edge (no broker)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.events import Click, Impression
from stream.kafka.producers import replay_events
from stream.privacy import Pseudonymizer, is_pseudonym
from stream.settings import Settings

edge = Pseudonymizer(b"k1")


@given(st.text(min_size=1, max_size=64), st.text(min_size=1, max_size=64))
def test_pseudonyms_are_keyed_stable_and_keep_users_apart(a, b):
    assert is_pseudonym(edge.user(a)) and edge.user(a) == edge.user(a)
    assert (edge.user(a) == edge.user(b)) == (a == b)
    assert edge.user(a) != Pseudonymizer(b"k2").user(a)


def test_only_the_buckets_the_system_uses_travel():
    raw = {"gender": "female", "age": 44, "occupation": "doctor", "zip": "55455",
           "email": "x@example.com"}
    assert edge.attrs(raw) == {"gender": "F", "age": "35-44"}
    assert edge.attrs({"gender": "x", "age": "old"}) == {}
    assert edge.attrs({"age": "56+"}) == {"age": "56+"}
    assert edge.attrs(None) == {}


def test_an_event_leaves_the_edge_with_a_pseudonym_and_buckets():
    imp = Impression(event_id="e", request_id="r", ts=1.0, user_id="alice", items=["1"],
                     propensities=[1.0], policy_version="p",
                     user={"gender": "M", "age": 19, "occupation": "student"})
    out = edge.event(imp)
    assert out.user_id == edge.user("alice") and out.user == {"gender": "M", "age": "18-24"}
    assert (out.event_id, out.items, out.propensities) == ("e", ["1"], [1.0])
    click = edge.event(Click(event_id="c", request_id="r", ts=2.0, user_id="alice",
                             item_id="1"))
    assert click.user_id == out.user_id and click.item_id == "1"


def test_the_key_is_never_shown_and_previous_keys_are_kept_for_erasure():
    s = Settings().replace(privacy={"pseudonym_key": "current-key-abc",
                                    "previous_pseudonym_keys": "older-key-1, older-key-2"})
    edges = Pseudonymizer.all_from_settings(s.privacy)
    assert len(edges) == 3 and len({e.user("u") for e in edges}) == 3
    assert "current-key-abc" not in repr(edges[0])
    with pytest.raises(ValueError):
        Pseudonymizer(b"")


def test_the_replay_producer_sends_pseudonyms_and_buckets_only(movielens):
    mine = Pseudonymizer(b"replay-key")
    raw_ids = set(movielens.users.user_id.tolist())
    events = list(replay_events(movielens, limit=300, pseudonyms=mine))
    assert all(is_pseudonym(e.user_id) and e.user_id not in raw_ids for e in events)
    assert {e.user_id for e in events} == {mine.user(str(u))
                                           for u in movielens.ratings.user_id[:300].tolist()}
    for e in events:
        if isinstance(e, Impression):
            assert set(e.user) <= {"gender", "age"} and isinstance(e.user.get("age", ""), str)


@pytest.mark.parametrize("args", [["forget", "someone@example.com"], ["serve"]])
def test_the_edge_refuses_the_built_in_pseudonym_key_in_one_line(args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAIRSTREAM_")}
    env |= {"FAIRSTREAM_KAFKA__BOOTSTRAP": "127.0.0.1:1",  # nobody there: refused before
            "FAIRSTREAM_POLICY__SIGNING_KEY": "a-real-signing-key"}
    done = subprocess.run([sys.executable, "-m", "stream.cli", *args], text=True, env=env,
                          capture_output=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("fairstream: error:") and "built-in pseudonym key" in line
    assert "export FAIRSTREAM_PRIVACY__PSEUDONYM_KEY=$(openssl rand -hex 32)" in line
    assert "someone@example.com" not in done.stderr + done.stdout
