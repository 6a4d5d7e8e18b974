"""Impression discounting at serving time, on a real bundle over the MovieLens catalog."""

from __future__ import annotations

import numpy as np
import pytest

from stream.core.recent import RecentImpressions
from stream.serve import Recommender
from stream.settings import Settings
from tests.stream.serve.conftest import make_bundle, open_bundle

pytestmark = pytest.mark.model


def _recommender(ml_catalog, recent):
    settings = Settings()
    rec = Recommender(seed=0, recent=recent)
    rec.set_catalog(ml_catalog.ids, ml_catalog.embeddings,
                    [g.get("popularity", "unknown") for g in ml_catalog.groups])
    rec.set_policy(open_bundle(settings, make_bundle(settings, ml_catalog, 1, updates=500)))
    return rec


def test_an_ignored_slate_is_not_shown_again_and_a_click_brings_its_item_back(ml_catalog):
    cands = list(ml_catalog.ids[:12])
    plain = _recommender(ml_catalog, None)
    rec = _recommender(ml_catalog, RecentImpressions(strength=1.0, ttl_s=60.0))
    attrs = {"gender": "F", "age": 30}
    first = rec.recommend("u", attrs, cands, 5, now=0.0)
    assert first.items == plain.recommend("u", attrs, cands, 5, now=0.0).items
    second = rec.recommend("u", attrs, cands, 5, now=1.0)
    assert not set(first.items) & set(second.items)  # 12 candidates: 7 not yet shown
    assert np.all(np.asarray(second.propensities) > 0)
    # the policy alone would have shown the first slate again
    assert plain.recommend("u", attrs, cands, 5, now=1.0).items == first.items
    assert rec.observe_feedback("u", first.items[0], "click", ts=2.0)
    # clicked: no longer discounted, so it beats the four ignored ones
    assert rec.recommend("u", attrs, first.items, 1, now=3.0).items == first.items[:1]
    # another user is not affected; after the ttl the first user is not either
    assert rec.recent.penalties("v", cands, now=3.0) is None
    assert rec.recent.penalties("u", cands, now=3.0) is not None
    assert rec.recent.penalties("u", cands, now=100.0) is None

def test_the_whole_catalog_path_discounts_too(ml_catalog):
    rec = _recommender(ml_catalog, RecentImpressions(strength=1.0, ttl_s=60.0))
    first = rec.recommend("u", {}, None, 5, now=0.0)
    second = rec.recommend("u", {}, None, 5, now=1.0)
    assert not set(first.items) & set(second.items)


def test_a_click_reported_to_the_server_clears_the_discount_at_once(ml_catalog):
    """POST /feedback calls note_click: no wait for the event's round trip through Kafka,
    and the profile is left to that round trip (counted once)."""
    rec = _recommender(ml_catalog, RecentImpressions(strength=1.0, ttl_s=60.0))
    first = rec.recommend("u", {}, list(ml_catalog.ids[:12]), 5, now=0.0)
    before = len(rec.profiles)
    rec.note_click("u", first.items[2])
    pen = rec.recent.penalties("u", first.items, now=1.0)
    assert pen.tolist() == [-1.0, -1.0, 0.0, -1.0, -1.0]
    assert len(rec.profiles) == before
