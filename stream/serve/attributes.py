"""User attributes at the HTTP edge: the rule of :mod:`stream.attributes` as 400s, and a
key named where msgspec's own message cannot name it.

>>> check_user({"gender": "f", "age": 40, "plan": "gold"})
>>> check_user({"age": "forty"})
Traceback (most recent call last):
...
stream.serve.exceptions.BadRequest: invalid_field: user.age: 'forty' is not an age: whole ...
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from stream.attributes import attribute_problem
from stream.serve.exceptions import BadRequest


def check_user(user: Mapping[str, Any] | None) -> None:
    """Raise :class:`BadRequest` if a read attribute has a value that cannot be read."""
    problem = attribute_problem(user)
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
