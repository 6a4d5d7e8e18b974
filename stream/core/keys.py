"""Policy signing keys: one key signs, a short list verifies, and none is ever shown.

Workers sign what they publish (bundles, checkpointed snapshots) with
``policy.signing_key``; whoever verifies accepts that key and every key in
``policy.verify_keys`` (comma-separated). A rotation therefore needs no downtime:

1. servers (and workers) get the new key in ``verify_keys``: they accept old and new;
2. workers sign with the new key (``signing_key`` = new, ``verify_keys`` = old, so a
   worker still opens the checkpoint it wrote with the old one);
3. once every retained bundle and checkpoint is signed with the new key, drop the old
   one from ``verify_keys``.

A :class:`KeyRing` never prints its keys (``repr`` gives their number only), and
:func:`refuse_dev_key` is what ``fairstream worker`` and ``fairstream serve`` call
before they start: the built-in development key is for ``fairstream demo`` and the
tests, and anyone who knows it could forge a policy.

Both signed formats (:mod:`bandits.snapshot`, :mod:`stream.core.bundle`) end with
``HMAC-SHA256(key, everything before it)``, so one :meth:`KeyRing.key_for` finds the
key that signed either.

>>> ring = KeyRing(b"new", (b"old",))
>>> import hashlib, hmac
>>> body = b"payload"
>>> ring.key_for(body + hmac.new(b"old", body, hashlib.sha256).digest())
b'old'
>>> ring.key_for(body + hmac.new(b"forged", body, hashlib.sha256).digest()) is None
True
>>> ring
KeyRing(signs with 1 key, verifies with 2)
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

from stream.exceptions import ConfigError
from stream.settings import DEV_PSEUDONYM_KEY, DEV_SIGNING_KEY, PolicySettings, Settings

_DIGEST = 32

#: What an operator runs to make a key (the refusal message quotes it).
HOW_TO_SET = "export FAIRSTREAM_POLICY__SIGNING_KEY=$(openssl rand -hex 32)"
HOW_TO_SET_PSEUDONYM = "export FAIRSTREAM_PRIVACY__PSEUDONYM_KEY=$(openssl rand -hex 32)"


@dataclass(frozen=True)
class KeyRing:
    """The key that signs and the keys accepted when verifying (signing key first)."""

    signing: bytes = field(repr=False)
    others: tuple[bytes, ...] = field(default=(), repr=False)

    @classmethod
    def from_settings(cls, policy: PolicySettings) -> KeyRing:
        others = tuple(k.strip().encode() for k in policy.verify_keys.split(",") if k.strip())
        return cls(policy.signing_key.encode(), others)

    @property
    def accepted(self) -> tuple[bytes, ...]:
        return (self.signing, *(k for k in self.others if k != self.signing))

    def key_for(self, data: bytes) -> bytes | None:
        """The accepted key whose HMAC-SHA256 of ``data[:-32]`` is ``data[-32:]``, or None.
        Every key is tried (constant-time compares), so timing says nothing of which."""
        data = bytes(data)
        if len(data) < _DIGEST:
            return None
        body, signature = data[:-_DIGEST], data[-_DIGEST:]
        found = None
        for key in self.accepted:
            if hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest(), signature) \
                    and found is None:
                found = key
        return found

    def __repr__(self) -> str:
        return f"KeyRing(signs with 1 key, verifies with {len(self.accepted)})"


def refuse_dev_key(settings: Settings, role: str, edge: bool = False,
                   signing: bool = True) -> None:
    """Raise :class:`ConfigError` (one line, saying how to set a key) if ``role`` would
    sign or verify with the built-in development key, or, at the ``edge`` (the server),
    pseudonymise users with the built-in pseudonym key."""
    ring = KeyRing.from_settings(settings.policy)
    if signing and DEV_SIGNING_KEY.encode() in ring.accepted:
        raise ConfigError(
            f"{role} refuses the built-in development signing key (it is public: anyone "
            f"could forge a policy); set one: {HOW_TO_SET} (the same on workers and servers)")
    if edge and settings.privacy.pseudonym_key == DEV_PSEUDONYM_KEY:
        raise ConfigError(
            f"{role} refuses the built-in pseudonym key (it is public: anyone could link "
            f"pseudonyms to user ids); set one: {HOW_TO_SET_PSEUDONYM} (the same on every "
            "server and producer, never on workers)")


def run_key(settings: Settings) -> Settings:
    """``settings`` with fresh random keys where they hold a built-in one: for runs that
    start ``fairstream worker`` / ``serve`` processes of their own (the benches)."""
    if settings.policy.signing_key == DEV_SIGNING_KEY:
        settings = settings.replace(policy={"signing_key": secrets.token_hex(32)})
    if settings.privacy.pseudonym_key == DEV_PSEUDONYM_KEY:
        settings = settings.replace(privacy={"pseudonym_key": secrets.token_hex(32)})
    return settings
