"""The one rule for user attributes, wherever they enter: ``POST /recommend`` and impressions
on ``fairstream.events``.

Attributes are a flat object of strings and integers. fairstream reads two of them:

- ``gender``: ``"M"``, ``"F"``, ``"male"`` or ``"female"``, in any case;
- ``age``: whole years 0–130 (an integer, or digits in a string), or one of the age
  buckets ``"<18"``, ``"18-24"``, ``"25-34"``, ``"35-44"``, ``"45-49"``, ``"50-55"``,
  ``"56+"``.

A read attribute whose value cannot be read is refused, naming the key: a 400
``invalid_field`` at the server, a dead letter with reason ``invalid_field`` in the
worker. Every other key is accepted and not scored: the edge (server, producers,
:mod:`stream.privacy`) drops it, passing on only the gender code and the age bucket,
and a worker reading an impression that still carries one ignores it. An absent read
attribute puts the user in the ``unknown`` group.
Nothing is silently dropped in one place and refused in another.

This module stands alone (no ``learners`` import, which would load torch into the
worker's fetch process); a test checks that every value it accepts is one
:func:`learners.features.age_code` / ``gender_code`` reads.

>>> attribute_problem({"gender": "f", "age": 40, "plan": "gold"}) is None
True
>>> attribute_problem({"age": "forty"})
"user.age: 'forty' is not an age: whole years 0-130, or one of <18, 18-24, 25-34, 35-44, ..."
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

#: The age buckets (``learners.features.AGE_BUCKETS``).
AGE_BUCKETS = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
_GENDERS = frozenset({"M", "F", "MALE", "FEMALE"})
EXPECTED = {
    "gender": "M, F, male or female",
    "age": f"whole years 0-130, or one of {', '.join(AGE_BUCKETS)}",
}


def _readable_age(age: Any) -> bool:
    if isinstance(age, bool):
        return False
    if isinstance(age, str):
        age = age.strip()
        if age in AGE_BUCKETS:
            return True
        if not age.isdigit():
            return False
        age = int(age)
    return isinstance(age, int) and 0 <= age <= 130


@functools.lru_cache(maxsize=4096, typed=True)
def _problem(gender: Any, age: Any) -> str | None:
    if gender is not None and not (isinstance(gender, str)
                                   and gender.strip().upper() in _GENDERS):
        return f"user.gender: {gender!r} is not a gender: {EXPECTED['gender']}"
    if age is not None and not _readable_age(age):
        return f"user.age: {age!r} is not an age: {EXPECTED['age']}"
    return None


def attribute_problem(user: Mapping[str, Any] | None) -> str | None:
    """What is wrong with a read attribute of ``user`` (naming the key), or None."""
    if not user:
        return None
    gender, age = user.get("gender"), user.get("age")
    if gender is None and age is None:
        return None
    try:
        return _problem(gender, age)
    except TypeError:  # an unhashable value: not a string or an integer either
        return _problem.__wrapped__(gender, age)
