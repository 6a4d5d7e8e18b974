"""Impression discounting: what is remembered, for how long, and within what bounds."""

from __future__ import annotations

import numpy as np
import pytest

from stream.core.recent import RecentImpressions, recent_impressions
from stream.settings import Settings


def test_shown_not_clicked_items_are_discounted_until_clicked_or_expired():
    r = RecentImpressions(strength=0.7, ttl_s=10.0)
    r.shown("u", ["a", "b", "c"], now=100.0)
    r.clicked("u", "c")
    np.testing.assert_array_equal(r.penalties("u", ["c", "b", "x", "a"], now=105.0),
                                  [0.0, -0.7, 0.0, -0.7])
    assert r.penalties("other", ["a"], now=105.0) is None  # per user
    assert r.penalties("u", ["a", "b"], now=110.0) is None  # ttl passed
    r.shown("u", ["a"], now=120.0)  # shown again: the clock restarts
    np.testing.assert_array_equal(r.penalties("u", ["a", "b"], now=125.0), [-0.7, 0.0])


def test_index_path_equals_the_list_path():
    rng = np.random.default_rng(0)
    catalog = [f"i{j}" for j in range(200)]
    index = {item: j for j, item in enumerate(catalog)}
    r = RecentImpressions(strength=1.0, ttl_s=50.0, per_user=30)
    for t in range(40):
        r.shown("u", list(rng.choice(catalog, 5, replace=False)), now=float(t))
        if t % 3 == 0:
            r.clicked("u", str(rng.choice(catalog)))
    np.testing.assert_array_equal(r.penalties("u", catalog, now=60.0),
                                  r.penalties("u", catalog, now=60.0, index=index))


def test_memory_is_bounded_per_user_and_in_users():
    r = RecentImpressions(per_user=3, max_users=2)
    r.shown("u1", ["a", "b", "c", "d"], now=0.0)  # "a" is the oldest: dropped
    np.testing.assert_array_equal(r.penalties("u1", ["a", "b", "d"], now=1.0), [0, -1, -1])
    r.shown("u2", ["x"], now=1.0)
    r.shown("u1", ["e"], now=2.0)  # u1 is now the most recently served
    r.shown("u3", ["y"], now=3.0)  # over max_users: u2, the least recent, goes
    assert len(r) == 2 and r.penalties("u2", ["x"], now=3.0) is None
    assert r.penalties("u1", ["e"], now=3.0) is not None
    r.forget("u1")
    assert r.penalties("u1", ["e"], now=3.0) is None


def test_off_and_bad_arguments():
    off = RecentImpressions(strength=0.0)
    off.shown("u", ["a"], now=0.0)
    assert off.penalties("u", ["a"], now=1.0) is None and len(off) == 0
    assert recent_impressions(Settings().replace(serve={"impression_discount": 0.0})) is None
    assert recent_impressions(Settings()).strength == Settings().serve.impression_discount
    for kwargs in ({"strength": -1.0}, {"ttl_s": 0.0}, {"per_user": 0}, {"max_users": 0}):
        with pytest.raises(ValueError):
            RecentImpressions(**kwargs)
