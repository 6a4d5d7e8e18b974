"""Errors raised by the serving layer; each carries a bounded ``reason``.

The reason is what the HTTP error body (``{"error": reason, "detail": ...}``)
and the ``fairstream_serve_invalid_requests_total{reason}`` counter carry, so it
comes from the small fixed set :data:`REASONS`; ``detail`` says precisely what
was wrong.

>>> err = BadRequest("invalid_k", "k=0 is outside 1..50")
>>> err.status, err.reason, str(err)
(400, 'invalid_k', 'invalid_k: k=0 is outside 1..50')
"""

from __future__ import annotations

from stream.exceptions import FairstreamError

#: Every reason a request can be refused for; bounded, so usable as a label.
REASONS = (
    "malformed_json",
    "invalid_field",
    "body_too_large",
    "body_timeout",
    "header_timeout",
    "too_many_candidates",
    "duplicate_candidate",
    "unknown_item",
    "clock_skew",
    "invalid_k",
    "not_ready",
    "queue_full",
    "kafka_unavailable",
    "unauthorized",
    "forbidden",
    "admin_disabled",
    "unknown_version",
    "not_found",
    "method_not_allowed",
    # online experiments (stream.experiments.InvalidExperiment reasons)
    "invalid_name",
    "invalid_arms",
    "invalid_arm",
    "invalid_shares",
    "duplicate_arm",
    "unknown_arm",
    "duplicate_experiment",
    "experiment_running",
    "no_experiment",
    "experiment_conflict",
)


class ServeError(FairstreamError):
    """A request the server refuses; ``status`` is the HTTP status it maps to."""

    status = 400

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class BadRequest(ServeError):
    """The request is malformed or names things the server does not know (4xx)."""

    def __init__(self, reason: str, detail: str, status: int = 400) -> None:
        super().__init__(reason, detail)
        self.status = status


class NotReady(ServeError):
    """No verified policy or no catalog yet (503: retry later, the request was fine)."""

    status = 503

    def __init__(self, detail: str) -> None:
        super().__init__("not_ready", detail)


class Unauthorized(ServeError):
    """An admin endpoint was called without (401) or with a wrong (403) token."""

    def __init__(self, reason: str, detail: str, status: int) -> None:
        super().__init__(reason, detail)
        self.status = status
