"""The rule for a request's user attributes (``"user"`` of ``POST /recommend``).

Attributes are a flat object of at most 32 keys, each value a string or an
integer. fairstream reads two of them:

- ``gender``: ``"M"``, ``"F"``, ``"male"`` or ``"female"``, in any case;
- ``age``: whole years 0–130 (an integer, or digits in a string), or one of the
  age buckets ``"<18"``, ``"18-24"``, ``"25-34"``, ``"35-44"``, ``"45-49"``,
  ``"50-55"``, ``"56+"``.

A read attribute whose value cannot be read is refused (400 ``invalid_field``),
as is any value that is not a string or an integer, and the error names the
key. Every other key is kept as given: it is logged with the impression and not
used for scoring. A read attribute that is absent puts the user in the
``unknown`` group.

>>> check_user({"gender": "f", "age": 40, "plan": "gold"})
>>> check_user({"age": "forty"})
Traceback (most recent call last):
...
stream.serve.exceptions.BadRequest: invalid_field: user.age: 'forty' is not an age: whole ...
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import msgspec

from learners.features import AGE_BUCKETS, age_code, gender_code
from stream.serve.exceptions import BadRequest

_EXPECTED = {
    "gender": "M, F, male or female",
    "age": f"whole years 0-130, or one of {', '.join(AGE_BUCKETS)}",
}


@functools.lru_cache(maxsize=4096, typed=True)
def _problem(gender: Any, age: Any) -> str | None:
    if gender is not None and gender_code(gender) < 0:
        return f"user.gender: {gender!r} is not a gender: {_EXPECTED['gender']}"
    text = isinstance(age, str) and age.strip() not in AGE_BUCKETS
    if age is not None and ((text and not age.strip().isdigit()) or age_code(age) < 0):
        return f"user.age: {age!r} is not an age: {_EXPECTED['age']}"
    return None


def check_user(user: Mapping[str, Any] | None) -> None:
    """Raise :class:`BadRequest` if a read attribute has a value that cannot be read."""
    if user:
        problem = _problem(user.get("gender"), user.get("age"))
        if problem is not None:
            raise BadRequest("invalid_field", problem)


def name_the_attribute(message: str, body: bytes) -> str:
    """msgspec says ``at `$.user[...]``` for a bad attribute value; find which one.

    Runs on the error path only, re-reading the body without a schema.

    >>> name_the_attribute("Expected `int | str`, got `float` - at `$.user[...]`",
    ...                    b'{"user_id": "u", "user": {"gender": "F", "age": 4.5}}')
    'user.age: 4.5 is not a string or an integer'
    """
    if "$.user[...]" not in message:
        return message
    try:
        user = msgspec.json.decode(body).get("user")
    except (msgspec.DecodeError, AttributeError):
        return message
    if isinstance(user, dict):
        for key, value in user.items():
            if isinstance(value, bool) or not isinstance(value, str | int):
                shown = msgspec.json.encode(value).decode()[:40]
                return f"user.{key}: {shown} is not a string or an integer"
    return message
