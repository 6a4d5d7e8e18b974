"""Hostile messages for ``fairstream.events``: one maker per shape, and the reason the worker
must dead-letter each under.

Every shape is invalid on purpose, so none may ever be learnt; each maker takes a seeded
``numpy.random.Generator`` and an index (which keeps event ids apart), and returns the
message value (``None`` is a tombstone, a record without a value).

>>> import numpy as np
>>> from stream.events import EventCodec
>>> from stream.exceptions import InvalidEvent
>>> codec, rng = EventCodec(max_clock_skew_s=300.0), np.random.default_rng(0)
>>> reason, make = SHAPES["wrong_version"]
>>> try:
...     codec.decode(make(rng, 0, 64 * 1024))
... except InvalidEvent as exc:
...     exc.reason == reason
True
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np

#: A known MovieLens item (the unknown-item shapes name items no catalog holds).
_ITEM = "1"


def _event(i: int, rng: np.random.Generator, **fields: object) -> dict[str, object]:
    """A valid-looking click (or impression, with ``type``) that ``fields`` then spoil."""
    base: dict[str, object] = {"v": 1, "type": "click", "event_id": f"chaos-{i}",
                               "request_id": f"chaos-r{i}",
                               "ts": float(8.8e8 + rng.integers(0, 10**6)),
                               "user_id": str(1 + rng.integers(0, 943)), "item_id": _ITEM}
    if fields.get("type") == "impression":
        base.pop("item_id")
        base.update(items=[_ITEM], propensities=[1.0], policy_version="chaos")
    base.update(fields)
    return base


def _dumps(obj: dict[str, object]) -> bytes:
    return json.dumps(obj).encode()


def random_bytes(rng: np.random.Generator, i: int, max_bytes: int) -> bytes:
    return rng.bytes(int(rng.integers(0, 300)))


def truncated_json(rng: np.random.Generator, i: int, max_bytes: int) -> bytes:
    raw = _dumps(_event(i, rng))
    return raw[:int(rng.integers(1, len(raw)))]  # the closing brace is always cut


def wrong_version(rng: np.random.Generator, i: int, max_bytes: int) -> bytes:
    return _dumps(_event(i, rng, v=[0, 2, 99, -1, "1", 1.5][i % 6]))


def nan(rng: np.random.Generator, i: int, max_bytes: int) -> bytes:
    bad = ["NaN", "Infinity", "-Infinity", "1e999"][i % 4]
    if i % 2:
        return _dumps(_event(i, rng, ts=0.0)).replace(b'"ts": 0.0', f'"ts": {bad}'.encode())
    raw = _dumps(_event(i, rng, type="purchase", value=0.0))
    return raw.replace(b'"value": 0.0', f'"value": {bad}'.encode())


def unknown_item(rng: np.random.Generator, i: int, max_bytes: int) -> bytes:
    if i % 2:
        return _dumps(_event(i, rng, item_id=f"no-such-item-{i}"))
    return _dumps(_event(i, rng, type="impression", items=[_ITEM, f"no-such-item-{i}"],
                         propensities=[0.5, 0.5]))


def duplicate_slate_items(rng: np.random.Generator, i: int, max_bytes: int) -> bytes:
    n = int(rng.integers(3, 7))  # "2" at least twice
    return _dumps(_event(i, rng, type="impression", items=["1", *["2"] * (n - 1)],
                         propensities=[1.0 / n] * n))


def bad_propensities(rng: np.random.Generator, i: int, max_bytes: int) -> bytes:
    props = [[0.0, 0.5], [1.5, 0.5], [-0.2, 0.5], [0.5]][i % 4]  # last: one for two items
    return _dumps(_event(i, rng, type="impression", items=["1", "2"], propensities=props))


def negative_values(rng: np.random.Generator, i: int, max_bytes: int) -> bytes:
    if i % 2:
        return _dumps(_event(i, rng, ts=-float(rng.integers(1, 10**9))))
    return _dumps(_event(i, rng, type="purchase", value=-float(rng.integers(1, 1000))))


def oversize(rng: np.random.Generator, i: int, max_bytes: int) -> bytes:
    """Just over the event limit: dead-lettered byte for byte."""
    return b"x" * (max_bytes + 1 + int(rng.integers(0, 4096)))


def oversize_huge(rng: np.random.Generator, i: int, max_bytes: int) -> bytes:
    """Over 1 MiB, more than the DLQ takes: dead-lettered as a marker."""
    return bytes([65 + i % 26]) * int(rng.integers(1 << 20, 3 << 19))


def non_utf8(rng: np.random.Generator, i: int, max_bytes: int) -> bytes:
    raw = _dumps(_event(i, rng, user_id="@@@@"))
    return raw.replace(b"@@@@", [b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"][i % 4])


def huge_ids(rng: np.random.Generator, i: int, max_bytes: int) -> bytes:
    field = ["user_id", "event_id", "request_id", "item_id"][i % 4]
    if i % 3 == 0:  # a number where an id belongs
        return _dumps(_event(i, rng)).replace(
            f'"{field}": '.encode(), f'"{field}": 1e308, "x{field}": '.encode())
    return _dumps(_event(i, rng, **{field: "9" * int(rng.integers(257, 20_000))}))


def far_future(rng: np.random.Generator, i: int, max_bytes: int) -> bytes:
    return _dumps(_event(i, rng, ts=float(10 ** int(rng.integers(10, 15)))))


def missing_field(rng: np.random.Generator, i: int, max_bytes: int) -> bytes:
    event = _event(i, rng)
    del event[["request_id", "user_id", "item_id", "ts", "event_id"][i % 5]]
    return _dumps(event)


def tombstone(rng: np.random.Generator, i: int, max_bytes: int) -> bytes | None:
    return None


Maker = Callable[[np.random.Generator, int, int], bytes | None]

#: shape -> (the reason the worker dead-letters it under, its maker)
SHAPES: dict[str, tuple[str, Maker]] = {
    "random_bytes": ("undecodable", random_bytes),
    "truncated_json": ("undecodable", truncated_json),
    "wrong_version": ("unknown_version", wrong_version),
    "nan": ("non_finite", nan),
    "unknown_item": ("unknown_item", unknown_item),
    "duplicate_slate_items": ("invalid_field", duplicate_slate_items),
    "bad_propensities": ("invalid_field", bad_propensities),
    "negative_values": ("invalid_field", negative_values),
    "oversize": ("oversize", oversize),
    "oversize_huge": ("oversize", oversize_huge),
    "non_utf8": ("undecodable", non_utf8),
    "huge_ids": ("invalid_field", huge_ids),
    "far_future": ("clock_skew", far_future),
    "missing_field": ("missing_field", missing_field),
    "tombstone": ("undecodable", tombstone),
}


def hostile_messages(n: int, rng: np.random.Generator, max_bytes: int,
                     huge: int = 2) -> list[tuple[str, bytes | None]]:
    """``n`` hostile messages as (shape, value): ``huge`` of them over 1 MiB, the rest spread
    evenly over the other shapes, in a random order."""
    shapes = [s for s in SHAPES if s != "oversize_huge"]
    names = ["oversize_huge"] * huge + [shapes[i % len(shapes)] for i in range(n - huge)]
    names = [names[j] for j in rng.permutation(len(names))]
    return [(name, SHAPES[name][1](rng, i, max_bytes)) for i, name in enumerate(names)]
