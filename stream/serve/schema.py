"""The typed bodies the HTTP API answers with (requests are typed in :mod:`stream.serve.app`).

Handlers encode these records, and :mod:`stream.serve.openapi` derives the
published schema from them, so the reference cannot drift from what is sent.

>>> import msgspec
>>> msgspec.json.encode(ErrorBody("invalid_k", "k=0 is outside 1..5"))
b'{"error":"invalid_k","detail":"k=0 is outside 1..5"}'
>>> msgspec.convert({"error": "no_such_reason", "detail": ""}, ErrorBody)
Traceback (most recent call last):
...
msgspec.ValidationError: Invalid enum value 'no_such_reason' - at `$.error`
"""

from __future__ import annotations

from typing import Literal

import msgspec

from stream.experiments import Experiment
from stream.serve.exceptions import REASONS

#: What an error body's ``error`` can say: every refusal reason, and a 500's.
ErrorReason = Literal[(*REASONS, "internal_error")]  # type: ignore[valid-type]


class ErrorBody(msgspec.Struct):
    """Every refusal: a reason from a fixed set (also the label of
    ``fairstream_serve_invalid_requests_total``) and a detail that says what was wrong."""

    error: ErrorReason
    detail: str


class FeedbackAccepted(msgspec.Struct):
    """The event was queued for ``fairstream.events``; ``event_id`` is the given one or a
    fresh one (send it again to retry idempotently)."""

    accepted: bool
    event_id: str


class Health(msgspec.Struct):
    """The process is up."""

    status: Literal["ok"]


class Readiness(msgspec.Struct, omit_defaults=True):
    """Whether the server can answer /recommend and forward /feedback, and if not, why:
    ``errors`` names each part that failed (followers, the events producer)."""

    ready: bool
    policy_version: int | None
    catalog_items: int
    catalog_loaded: bool | None = None
    feedback_following: bool | None = None
    producing: bool | None = None
    errors: dict[str, str] | None = None


class ReloadAccepted(msgspec.Struct):
    """The policy follower will re-read ``fairstream.policies`` from the start."""

    reloading: bool


class ForgetAccepted(msgspec.Struct):
    """The user's erasure markers are on ``fairstream.erasure``, acknowledged by Kafka."""

    forgotten: bool
    markers: int


class PinResult(msgspec.Struct):
    """The version now pinned (``null``: following the latest) and the version served."""

    pinned: int | None
    policy_version: int | None


class ExperimentState(msgspec.Struct):
    """The experiment in force after the call (``null``: none): its version, arms with
    their configured shares (``stopped`` says why an arm's users go to control), status
    (running, promoted, rolled_back) and who made the last change."""

    experiment: Experiment | None
