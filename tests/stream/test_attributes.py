"""One rule for user attributes at the server and on the events topic (stream.attributes),
and it agrees with what the feature map reads."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from learners.features import AGE_BUCKETS, age_code, gender_code
from stream.attributes import AGE_BUCKETS as RULE_BUCKETS
from stream.attributes import attribute_problem
from stream.events import EventCodec, Impression
from stream.exceptions import InvalidEvent

ages = st.one_of(st.integers(-50, 300), st.text(max_size=6),
                 st.sampled_from([*AGE_BUCKETS, " 40 ", "040", "4.5", "1e1", "nan"]))
genders = st.one_of(st.text(max_size=7), st.sampled_from(["M", "f", "Male", "FEMALE", " m "]))


def test_the_buckets_are_the_feature_maps():
    assert RULE_BUCKETS == AGE_BUCKETS


@given(ages)
def test_every_age_the_rule_accepts_is_one_the_feature_map_reads(age):
    if attribute_problem({"age": age}) is None:
        assert age_code(age) >= 0
    if isinstance(age, int) and 0 <= age <= 130:
        assert attribute_problem({"age": age}) is None


@given(genders)
def test_a_gender_is_accepted_exactly_when_the_feature_map_reads_it(gender):
    assert (attribute_problem({"gender": gender}) is None) == (gender_code(gender) >= 0)


def impression(user) -> bytes:
    codec = EventCodec()
    return codec.encode(Impression(event_id="e", request_id="r", ts=1.0, user_id="u",
                                   items=["i"], propensities=[1.0], policy_version="3",
                                   user=user))


@pytest.mark.parametrize(("user", "names"), [({"age": "forty"}, "user.age: 'forty'"),
                                             ({"gender": "x", "age": 3}, "user.gender: 'x'")])
def test_an_impression_with_an_unreadable_attribute_is_refused_by_the_worker_too(user, names):
    with pytest.raises(InvalidEvent) as info:
        EventCodec().decode(impression(user))
    assert info.value.reason == "invalid_field" and info.value.detail.startswith(names)


def test_other_attributes_are_kept_as_given():
    event = EventCodec().decode(impression({"age": 40, "plan": "gold", "tier": 3}))
    assert event.user == {"age": 40, "plan": "gold", "tier": 3}
