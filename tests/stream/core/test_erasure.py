"""Erasure on the learning state (no broker): profiles and open impressions go, from live
state, from the next checkpoint, and from a state restored from an older one; events
that predate the erasure are never learnt again."""

from __future__ import annotations

import numpy as np
import pytest

from stream.core.catalog import Catalog
from stream.core.checkpoint import Checkpoint
from stream.core.erasure import Erasures, decode_marker, encode_marker, token
from stream.core.state import LearningState
from stream.events import CatalogItem, Click, Impression
from stream.exceptions import InvalidEvent
from stream.settings import Settings

GONE, KEPT = "p1-" + "a" * 32, "p1-" + "b" * 32


class _Random:
    dim = 384

    def embed(self, texts):
        return np.random.default_rng(len(texts)).normal(size=(len(texts), 384))


def _state() -> LearningState:
    catalog = Catalog()
    catalog.add([CatalogItem(item_id=str(i), text=f"film {i}") for i in range(40)], _Random())
    return LearningState.fresh(Settings().replace(events={"attribution_window_s": 10.0}),
                               catalog)


def _visit(state: LearningState, user: str, n: int, ts: float) -> list:
    """An impression of item n and a click on it, at event time ts."""
    rid = f"{user}-{n}-{ts}"
    closed = state.observe(Impression(event_id=f"i-{rid}", request_id=rid, ts=ts, user_id=user,
                                      items=[str(n)], propensities=[1.0], policy_version="p",
                                      user={"gender": "F"}), partition=0)
    return closed + state.observe(Click(event_id=f"c-{rid}", request_id=rid, ts=ts + 1,
                                        user_id=user, item_id=str(n)), partition=0)


def _holds(ck: Checkpoint, user: str) -> bool:
    blob = repr(ck.header).encode() + b"".join(a.tobytes() for a in ck.arrays.values())
    return user.encode() in blob


def _learnt_then_open(state: LearningState) -> None:
    for user in (GONE, KEPT):
        _visit(state, user, 1, ts=0.0)
    state.learn(state.joiner.advance(0, 100.0))  # both profiles exist
    for user in (GONE, KEPT):
        _visit(state, user, 2, ts=100.0)            # and an open impression each


def test_forgetting_drops_profiles_and_open_impressions_from_state_and_checkpoint():
    state = _state()
    _learnt_then_open(state)
    older = state.to_checkpoint()
    assert _holds(older, GONE) and GONE in state.profiles

    erasures = Erasures()
    assert erasures.add(token(GONE), erased_at=150.0)
    out = erasures.forget(state.profiles, state.joiner)
    assert (out.profiles, out.open_impressions) == (1, 1)
    assert GONE not in state.profiles and KEPT in state.profiles
    assert {p["user_id"] for _, _, p in state.joiner.state()["open"]} == {KEPT}
    ck = state.to_checkpoint()
    assert not _holds(ck, GONE) and _holds(ck, KEPT)
    # The join still closes what is left (its heap lost the erased entry cleanly).
    assert [p.user_id for p in state.joiner.advance(0, 200.0)] == [KEPT]

    # A state restored from the older checkpoint forgets the same once it sees the marker.
    restored = LearningState.from_checkpoint(state.settings, state.catalog, older)
    assert GONE in restored.profiles
    erasures.forget(restored.profiles, restored.joiner)
    assert not _holds(restored.to_checkpoint(), GONE)


def test_events_that_predate_the_erasure_are_never_learnt_again():
    state, erasures = _state(), Erasures()
    erasures.add(token(GONE), erased_at=50.0)
    # A replay of the erased user's old events (a restore from an older checkpoint)...
    closed = _visit(state, GONE, 3, ts=10.0) + _visit(state, KEPT, 3, ts=10.0)
    closed += state.joiner.advance(0, 100.0)
    learned = state.learn(erasures.screen(closed))
    assert learned.rows == 1 and GONE not in state.profiles and KEPT in state.profiles
    # ...while the user's activity after being forgotten is a new start.
    closed = _visit(state, GONE, 4, ts=150.0) + state.joiner.advance(0, 300.0)
    assert state.learn(erasures.screen(closed)).rows == 1 and GONE in state.profiles


def test_markers_round_trip_and_junk_is_refused():
    assert decode_marker(encode_marker(12.5)) == 12.5
    for junk in (None, b"", b"{}", b'{"v": 2, "erased_at": 1}', b'{"v": 1, "erased_at": "x"}',
                 b'{"v": 1, "erased_at": NaN}', b"\xff"):
        with pytest.raises(InvalidEvent):
            decode_marker(junk)
    erasures = Erasures()
    assert erasures.add("t", 5.0) and not erasures.add("t", 4.0) and erasures.add("t", 6.0)
    assert GONE not in token(GONE) and len(token(GONE)) == 64
