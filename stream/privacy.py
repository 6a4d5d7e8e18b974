"""Privacy at the edge: pseudonyms and minimal attributes, made before Kafka sees a user.

The edge (``fairstream serve``, the replay producer, the demo's simulator, ``fairstream
forget``) holds ``privacy.pseudonym_key``; nothing behind it does. It replaces each user
id with a keyed HMAC and each user's attributes with the buckets the system uses::

    pseudonym(u) = "p1-" + hex(HMAC-SHA256(pseudonym_key, utf8(u))[:16])
    attrs(user)  = {"gender": "M"|"F", "age": "<18"|"18-24"|…|"56+"}   (unknown ones left out)

128 bits keep collisions out of reach (birthday bound ~2⁶⁴ users); without the key a
pseudonym cannot be computed from an id, so a leaked topic or checkpoint does not name
anyone. Rotating the key gives every user a new pseudonym: profiles under the old ones
are no longer looked up and age out (see the README's "Privacy").

>>> edge = Pseudonymizer(b"k")
>>> p = edge.user("alice")
>>> p == edge.user("alice") != Pseudonymizer(b"other").user("alice"), len(p), is_pseudonym(p)
(True, 35, True)
>>> edge.attrs({"gender": "F", "age": 31, "occupation": "writer", "zip": "55455"})
{'gender': 'F', 'age': '25-34'}
>>> edge
Pseudonymizer(p1, key hidden)
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from stream.events import Event, Impression
from stream.settings import PrivacySettings

PREFIX = "p1-"
_PATTERN = re.compile(r"p1-[0-9a-f]{32}")


def is_pseudonym(user_id: str) -> bool:
    """Whether ``user_id`` has the form of a pseudonym (not whether the key made it)."""
    return _PATTERN.fullmatch(user_id) is not None


class Pseudonymizer:
    """Keyed pseudonyms for user ids, minimal attributes for user maps (see module doc)."""

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("the pseudonym key must not be empty")
        self._key = bytes(key)

    @classmethod
    def from_settings(cls, privacy: PrivacySettings) -> Pseudonymizer:
        return cls(privacy.pseudonym_key.encode())

    @classmethod
    def all_from_settings(cls, privacy: PrivacySettings) -> list[Pseudonymizer]:
        """The current key's and every previous key's (``privacy.previous_pseudonym_keys``):
        an erasure must reach the pseudonyms a user had before a rotation too."""
        keys = [privacy.pseudonym_key, *(k.strip() for k in
                                         privacy.previous_pseudonym_keys.split(",")
                                         if k.strip())]
        return [cls(k.encode()) for k in dict.fromkeys(keys)]

    def __repr__(self) -> str:
        return "Pseudonymizer(p1, key hidden)"

    def user(self, user_id: str) -> str:
        digest = hmac.digest(self._key, user_id.encode("utf-8"), hashlib.sha256)
        return PREFIX + digest[:16].hex()

    @staticmethod
    def attrs(user: Mapping[str, Any] | None) -> dict[str, str | int]:
        """The gender code and age bucket of ``user``, and nothing else."""
        if not user:
            return {}
        # Imported here: the replay producer lives in stream.kafka, which the worker's fetch
        # process imports and which must not load the learning stack (torch) for it.
        from learners.features import AGE_BUCKETS, GENDERS, age_code, gender_code

        out: dict[str, str | int] = {}
        g = gender_code(user.get("gender"))
        if g >= 0:
            out["gender"] = GENDERS[g]
        try:
            a = age_code(user.get("age"))
        except TypeError:  # unhashable or odd values from an in-process caller
            a = -1
        if a >= 0:
            out["age"] = AGE_BUCKETS[a]
        return out

    def event(self, event: Event) -> Event:
        """``event`` with its user pseudonymised (and, for an impression, minimal attrs)."""
        if isinstance(event, Impression):
            return msgspec.structs.replace(event, user_id=self.user(event.user_id),
                                           user=self.attrs(event.user))
        return msgspec.structs.replace(event, user_id=self.user(event.user_id))
