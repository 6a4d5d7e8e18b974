import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.events import (
    REASONS,
    CatalogItem,
    Click,
    EventCodec,
    Impression,
    Purchase,
    decode_catalog_item,
    encode_catalog_item,
)
from stream.exceptions import InvalidEvent

codec = EventCodec(max_bytes=2048, max_slate=10)
CATALOG = {"i1", "i2", "i3"}


def impression(**over):
    fields = dict(event_id="e1", request_id="r1", ts=100.0, user_id="u1", items=["i1", "i2"],
                  propensities=[1.0, 0.5], policy_version="fs-1/0", user={"gender": "F"})
    fields.update(over)
    return fields


def raw(fields, type_="impression"):
    return json.dumps({"v": 1, "type": type_, **fields}).encode()


def reason_of(data, known=CATALOG):
    with pytest.raises(InvalidEvent) as err:
        codec.decode(data, known_items=known)
    assert err.value.reason in REASONS
    return err.value.reason


def test_round_trip_each_type():
    events = [
        Impression(**impression()),
        Click(event_id="e2", request_id="r1", ts=101.0, user_id="u1", item_id="i2"),
        Purchase(event_id="e3", request_id="r1", ts=102.5, user_id="u1", item_id="i1", value=9.5),
    ]
    for event in events:
        assert codec.decode(codec.encode(event), known_items=CATALOG) == event


@pytest.mark.parametrize("data, reason", [
    (b"\xff\xfe", "undecodable"),
    (b"[1, 2]", "undecodable"),
    (None, "undecodable"),
    (raw(impression()).replace(b'"v": 1', b'"v": 2'), "unknown_version"),
    (raw(impression()).replace(b'"v": 1', b'"v": true'), "unknown_version"),
    (raw({k: v for k, v in impression().items() if k != "user_id"}), "missing_field"),
    (raw(impression(ts="noon")), "invalid_field"),
    (raw(impression(items=[])), "invalid_field"),
    (raw(impression(items=["i1", "i1"])), "invalid_field"),
    (raw(impression(propensities=[1.0])), "invalid_field"),
    (raw(impression(propensities=[1.0, 0.0])), "invalid_field"),
    (raw(impression(ts=-1.0)), "invalid_field"),
    (raw(impression(extra=1)), "invalid_field"),
    (raw(impression(user_id="")), "invalid_field"),
    (raw(impression(), type_="view"), "invalid_field"),
    (raw(impression(propensities=[1.0, float("nan")])), "non_finite"),
    (raw(impression(ts=float("inf"))), "non_finite"),
    (b'{"v":1,"type":"purchase","event_id":"e","request_id":"r","ts":1,"user_id":"u",'
     b'"item_id":"i1","value":1e999}', "non_finite"),
    (raw(impression(items=["i1", "nope"])), "unknown_item"),
    (raw({"event_id": "e", "request_id": "r", "ts": 1.0, "user_id": "u", "item_id": "zz"},
         "click"), "unknown_item"),
    (b" " * 2049, "oversize"),
    (b'{"v":1,"type":"click","event_id":"e\xff","request_id":"r","ts":1,"user_id":"u",'
     b'"item_id":"i1"}', "undecodable"),
    (b'{"v":1,"type":"cl\xffick"}', "undecodable"),
])
def test_each_rejection_reason(data, reason):
    assert reason_of(data) == reason


def test_negative_purchase_value_is_invalid():
    bad = {"event_id": "e", "request_id": "r", "ts": 1.0, "user_id": "u", "item_id": "i1",
           "value": -3.0}
    assert reason_of(raw(bad, "purchase")) == "invalid_field"


def test_slate_longer_than_limit_is_invalid():
    items = [f"x{i}" for i in range(11)]
    data = raw(impression(items=items, propensities=[1.0] * 11))
    assert reason_of(data, known=None) == "invalid_field"


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_decode_or_reject_with_a_known_reason(data):
    try:
        event = codec.decode(data, known_items=CATALOG)
    except InvalidEvent as exc:
        assert exc.reason in REASONS
        assert exc.detail
    else:  # vanishingly rare, but then it must be a fully valid event
        assert math.isfinite(event.ts)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "type", "event_id", "request_id", "ts", "user_id",
                                        "item_id", "items", "propensities", "value", "user",
                                        "policy_version"]), json_values, max_size=12))
def test_arbitrary_json_objects_never_escape_the_codec(obj):
    data = json.dumps(obj).encode()
    try:
        codec.decode(data, known_items=CATALOG)
    except InvalidEvent as exc:
        assert exc.reason in REASONS


ids = st.text(min_size=1, max_size=20)


@settings(max_examples=200, deadline=None)
@given(ids, ids, st.floats(0, 1e12), ids,
       st.lists(st.sampled_from(sorted(CATALOG)), min_size=1, max_size=3, unique=True),
       st.floats(1e-6, 1.0))
def test_valid_impressions_round_trip(event_id, request_id, ts, user_id, items, p):
    event = Impression(event_id=event_id, request_id=request_id, ts=ts, user_id=user_id,
                       items=items, propensities=[p] * len(items), policy_version="v")
    assert codec.decode(codec.encode(event), known_items=CATALOG) == event


def test_catalog_item_round_trip_and_validation():
    item = CatalogItem(item_id="1", text="Toy Story (1995)", groups={"popularity": "head"})
    assert decode_catalog_item(encode_catalog_item(item)) == item
    with pytest.raises(InvalidEvent):
        decode_catalog_item(b'{"item_id": "1", "text": ""}')
    with pytest.raises(InvalidEvent):
        decode_catalog_item(b"nope")
    with pytest.raises(InvalidEvent):
        decode_catalog_item(b'{"item_id": "1", "text": "caf\xe9"}')  # Latin-1, not UTF-8


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=8), st.sampled_from(["event_id", "user_id", "item_id"]))
def test_any_bytes_inside_a_string_decode_or_reject_with_a_known_reason(junk, field):
    """Bytes that are not UTF-8 inside a JSON string once escaped the codec as a
    UnicodeDecodeError (and took the fetch process down with them)."""
    fields = {"event_id": b"e", "request_id": b"r", "user_id": b"u", "item_id": b"i1"}
    fields[field] = b"x" + junk.replace(b'"', b"").replace(b"\\", b"")
    data = (b'{"v":1,"type":"click","ts":1,'
            + b",".join(b'"%s":"%s"' % (k.encode(), v) for k, v in fields.items()) + b"}")
    try:
        codec.decode(data)
    except InvalidEvent as exc:
        assert exc.reason in REASONS


def test_events_stamped_beyond_the_clock_skew_are_rejected_and_the_past_is_not():
    codec = EventCodec(max_bytes=4096, max_slate=10, max_clock_skew_s=300.0,
                       clock=lambda: 1_000_000.0)

    def click(ts: float) -> bytes:
        return raw({"event_id": "e", "request_id": "r", "ts": ts, "user_id": "u",
                    "item_id": "i1"}, "click")

    assert codec.decode(click(1_000_300.0)).ts == 1_000_300.0  # the bound is inclusive
    assert codec.decode(click(1.0)).ts == 1.0  # a replay of old events is fine
    with pytest.raises(InvalidEvent) as info:
        codec.decode(click(1_000_300.5))
    assert info.value.reason == "clock_skew"
    assert EventCodec(max_bytes=4096).decode(click(1e12)).ts == 1e12  # no bound: accepted
