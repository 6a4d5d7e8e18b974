"""The OpenAPI 3.1 document of the HTTP API, derived from the msgspec types that validate it.

Request bodies are the records :mod:`stream.serve.app` decodes with, responses
the ones it encodes (:mod:`stream.serve.schema`, :class:`Recommendation`); their
JSON Schemas come from ``msgspec.json.schema_components``, so a field added to
a record is in the reference the next time the document is built. What the
types cannot say (paths, statuses, which reasons lead to which status) is the
table :data:`ENDPOINTS`; a test checks it lists every route the app serves.

>>> doc = openapi_document()
>>> doc["openapi"], sorted(doc["paths"]["/recommend"])
('3.1.0', ['post'])
>>> doc["components"]["schemas"]["RecommendRequest"]["required"]
['user_id']
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import msgspec

from stream.serve.app import (
    ArmRequest,
    ExperimentRequest,
    FeedbackRequest,
    ForgetRequest,
    PinRequest,
    RecommendRequest,
    RollbackRequest,
    SharesRequest,
)
from stream.serve.recommender import Recommendation
from stream.serve.schema import (
    ErrorBody,
    ExperimentState,
    FeedbackAccepted,
    ForgetAccepted,
    Health,
    PinResult,
    Readiness,
    ReloadAccepted,
)

REF = "#/components/schemas/{name}"

#: A response: (the record it carries, or a media type for a non-JSON body; when it is sent).
Response = tuple[type | str, str]


@dataclass(frozen=True)
class Endpoint:
    """One operation: what the types cannot say about it."""

    method: str
    path: str
    summary: str
    description: str
    responses: dict[int, Response]
    body: type | None = None
    admin: bool = False
    tags: tuple[str, ...] = field(default=("serving",))
    #: default: the path's words (a second method on one path needs its own)
    operation_id: str | None = None


_BODY_LIMITS = {
    408: (ErrorBody, "`body_timeout`: the body did not arrive within `serve.body_timeout_s`; "
                     "`header_timeout` (any endpoint): the headers were not complete within "
                     "`serve.header_timeout_s`"),
    413: (ErrorBody, "`body_too_large`: over `serve.max_body_bytes`"),
}
_ADMIN_ERRORS = {
    401: (ErrorBody, "`unauthorized`: no `Authorization: Bearer <token>` header"),
    403: (ErrorBody, "`forbidden`: wrong token; `admin_disabled`: no `serve.admin_token` set"),
}

_EXPERIMENT_ERRORS = ("`malformed_json`, `invalid_field`, `invalid_name`, `invalid_arms`, "
                      "`invalid_arm`, `invalid_shares`, `duplicate_arm`, `unknown_arm`")
_EXPERIMENT_STATE = {
    404: (ErrorBody, "`not_found`: no experiment control; `unknown_version`: a pinned "
                     "version this server does not keep"),
    409: (ErrorBody, "`duplicate_experiment`, `experiment_running`, `no_experiment`, "
                     "`experiment_conflict` (another change came first)"),
    503: (ErrorBody, "`kafka_unavailable`: the change was not acknowledged or read back"),
}

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "post", "/recommend", "Rank candidates for a user",
        "Scores `candidates` (default: the whole catalog) with the latest verified policy "
        "and returns the best `k` (default: `bandit.slate_size`), each with its score and "
        "the probability the policy had of showing it there (its propensity). The "
        "impression is logged to `fairstream.events` with the request id, so feedback can "
        "name it. With `\"explain\": true` the answer also splits each score into parts "
        "that sum to it ([Explanation](#explanation)); without it nothing is computed.",
        {200: (Recommendation, "the slate, best first"),
         400: (ErrorBody, "`malformed_json`, `invalid_field`, `too_many_candidates`, "
                          "`duplicate_candidate`, `unknown_item`, `invalid_k`"),
         **_BODY_LIMITS,
         500: (ErrorBody, "`internal_error`: a bug; the server log has the traceback"),
         503: (ErrorBody, "`not_ready`: no verified policy or no catalog yet")},
        body=RecommendRequest),
    Endpoint(
        "post", "/feedback", "Report a click or a purchase",
        "Validated as the worker would (known item, finite value, event time at most "
        "`events.max_clock_skew_s` ahead), then forwarded to `fairstream.events` keyed by "
        "user. The worker joins it to the impression with the same `request_id` inside the "
        "attribution window. Give an `event_id` to make retries idempotent.",
        {202: (FeedbackAccepted, "queued for Kafka"),
         400: (ErrorBody, "`malformed_json`, `invalid_field`, `unknown_item`, `clock_skew`"),
         **_BODY_LIMITS,
         503: (ErrorBody, "`kafka_unavailable`: events do not reach Kafka; `queue_full`: "
                          "the log queue is full. Retry later")},
        body=FeedbackRequest),
    Endpoint("get", "/healthz", "Liveness", "200 while the process answers.",
             {200: (Health, "up")}, tags=("operations",)),
    Endpoint("get", "/readyz", "Readiness",
             "Ready once a verified policy and the catalog are loaded, the user profiles "
             "are loaded (`serve.profiles = topic`: every serving profile read; `events`: "
             "the events followed; `feedback_following`) and events reach Kafka.",
             {200: (Readiness, "ready"), 503: (Readiness, "not ready; `errors` says why")},
             tags=("operations",)),
    Endpoint("get", "/metrics", "Prometheus metrics",
             "The server's own registry in the Prometheus text format.",
             {200: ("text/plain", "metrics")}, tags=("operations",)),
    Endpoint("post", "/admin/reload", "Re-read the policies topic",
             "Re-reads `fairstream.policies` from the start (e.g. after a signing-key "
             "change).",
             {202: (ReloadAccepted, "reload requested"), **_ADMIN_ERRORS,
              404: (ErrorBody, "`not_found`: this server has no policy follower")},
             admin=True, tags=("admin",)),
    Endpoint("post", "/admin/pin", "Pin a policy version",
             "Serve a kept version (one of the last `serve.keep_versions` verified ones) "
             "until unpinned with `{\"version\": null}`; newer versions are verified and "
             "kept meanwhile.",
             {200: (PinResult, "pinned or unpinned"), 400: (ErrorBody, "`invalid_field`"),
              **_ADMIN_ERRORS,
              404: (ErrorBody, "`unknown_version`: not kept; `not_found`: no follower")},
             body=PinRequest, admin=True, tags=("admin",)),
    Endpoint("post", "/admin/forget", "Erase a user",
             "Publishes the user's erasure markers (one per pseudonym the user has had) on "
             "the compacted `fairstream.erasure` topic and answers once Kafka acknowledged "
             "them; this server drops the user's cached profile first. Workers drop the "
             "profile and open impressions, and checkpoint at once (README, Privacy).",
             {202: (ForgetAccepted, "markers written"), 400: (ErrorBody, "`invalid_field`"),
              **_ADMIN_ERRORS,
              404: (ErrorBody, "`not_found`: this server has no erasure topic"),
              503: (ErrorBody, "`kafka_unavailable`: the markers were not acknowledged")},
             body=ForgetRequest, admin=True, tags=("admin",)),
    Endpoint("get", "/admin/experiment", "The experiment in force",
             "The online experiment this server applies (`null`: none): its arms, their "
             "shares, status and version.",
             {200: (ExperimentState, "the experiment"), **_ADMIN_ERRORS,
              404: (ErrorBody, "`not_found`: this server takes no experiment changes")},
             admin=True, tags=("experiments",), operation_id="admin_experiment_get"),
    Endpoint("post", "/admin/experiment", "Start an experiment",
             "Starts an A/B split between arms (policy configurations) as version 1 of a "
             "new experiment: users are assigned sticky by a keyed hash of their pseudonym "
             "and the salt. Published on `fairstream.experiments`; every server and worker "
             "follows it. Refused, with the configuration in force left as it is, when the "
             "shares do not sum to 1, names repeat, the control is not an arm, the name was "
             "used before, or another experiment runs.",
             {200: (ExperimentState, "running"), 400: (ErrorBody, _EXPERIMENT_ERRORS),
              **_ADMIN_ERRORS, **_EXPERIMENT_STATE},
             body=ExperimentRequest, admin=True, tags=("experiments",)),
    Endpoint("post", "/admin/experiment/shares", "Change the shares",
             "New traffic shares for every arm of the running experiment (a new version).",
             {200: (ExperimentState, "changed"), 400: (ErrorBody, _EXPERIMENT_ERRORS),
              **_ADMIN_ERRORS, **_EXPERIMENT_STATE},
             body=SharesRequest, admin=True, tags=("experiments",)),
    Endpoint("post", "/admin/experiment/stop", "Stop an arm",
             "The arm's users go to control (what a guardrail does with "
             "`experiment.auto_stop`); no other user changes arm.",
             {200: (ExperimentState, "stopped"), 400: (ErrorBody, _EXPERIMENT_ERRORS),
              **_ADMIN_ERRORS, **_EXPERIMENT_STATE},
             body=ArmRequest, admin=True, tags=("experiments",)),
    Endpoint("post", "/admin/experiment/promote", "Promote an arm",
             "Ends the experiment: the arm's configuration serves every user.",
             {200: (ExperimentState, "promoted"), 400: (ErrorBody, _EXPERIMENT_ERRORS),
              **_ADMIN_ERRORS, **_EXPERIMENT_STATE},
             body=ArmRequest, admin=True, tags=("experiments",)),
    Endpoint("post", "/admin/experiment/rollback", "Roll back",
             "Ends the experiment: control serves every user.",
             {200: (ExperimentState, "rolled back"), 400: (ErrorBody, _EXPERIMENT_ERRORS),
              **_ADMIN_ERRORS, **_EXPERIMENT_STATE},
             body=RollbackRequest, admin=True, tags=("experiments",)),
    Endpoint("get", "/openapi.json", "This document", "The OpenAPI 3.1 document.",
             {200: ("application/json", "the document")}, tags=("reference",)),
    Endpoint("get", "/docs", "The rendered reference",
             "This reference as an HTML page (no scripts, nothing fetched).",
             {200: ("text/html", "the page")}, tags=("reference",)),
)


def _version() -> str:
    try:
        return metadata.version("fairstream")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0.0.0"


def _clean(schemas: dict[str, Any]) -> dict[str, Any]:
    """Docstrings arrive indented; a description reads better dedented."""
    for schema in schemas.values():
        if "description" in schema:
            schema["description"] = inspect.cleandoc(schema["description"]).replace("``", "`")
    return schemas


def _content(kind: type | str) -> dict[str, Any]:
    if isinstance(kind, str):
        return {kind: {"schema": {"type": "object" if kind.endswith("json") else "string"}}}
    return {"application/json": {"schema": {"$ref": REF.format(name=kind.__name__)}}}


def _operation(ep: Endpoint) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": ep.operation_id or ep.path.strip("/").replace("/", "_").replace(".", "_"),
        "summary": ep.summary, "description": ep.description, "tags": list(ep.tags),
        "responses": {str(code): {"description": why, "content": _content(kind)}
                      for code, (kind, why) in sorted(ep.responses.items())},
    }
    if ep.body is not None:
        op["requestBody"] = {"required": True, "content": _content(ep.body)}
    if ep.admin:
        op["security"] = [{"adminToken": []}]
    return op


@functools.cache
def _document() -> bytes:
    types = sorted({kind for ep in ENDPOINTS
                    for kind in (ep.body, *(k for k, _ in ep.responses.values()))
                    if isinstance(kind, type)}, key=lambda t: t.__name__)
    _, schemas = msgspec.json.schema_components(types, ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for ep in ENDPOINTS:
        paths.setdefault(ep.path, {})[ep.method] = _operation(ep)
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "fairstream", "version": _version(),
                 "description": "Recommendations from the latest verified policy, feedback "
                                "into the event stream, and the server's own operations."},
        "paths": paths,
        "components": {
            "schemas": _clean(schemas),
            "securitySchemes": {"adminToken": {
                "type": "http", "scheme": "bearer",
                "description": "`serve.admin_token` (`FAIRSTREAM_SERVE__ADMIN_TOKEN`); "
                               "empty disables the admin endpoints"}},
        },
    }
    return msgspec.json.encode(doc)


def openapi_document() -> dict[str, Any]:
    """The document as a fresh dict (built once, from the types, per process)."""
    return msgspec.json.decode(_document())


def openapi_json() -> bytes:
    """The document as JSON bytes, as ``GET /openapi.json`` sends it."""
    return _document()
