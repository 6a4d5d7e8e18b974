"""The HTTP API of ``fairstream serve`` (Starlette): thin handlers over :class:`Recommender`.

=====================  ==========================================================
``POST /recommend``    ``{user_id, user?, candidates?, k?}`` → ranked items, scores,
                       propensities, policy_version, request_id (impression logged)
``POST /feedback``     ``{type: click|purchase, user_id, request_id, item_id, value?,
                       event_id?, ts?}`` → 202; forwarded to fairstream.events
                       (503 ``kafka_unavailable`` while events do not reach Kafka)
``GET /healthz``       the process is up
``GET /readyz``        200 once a verified policy and the catalog are loaded and
                       events reach Kafka, else 503 (the body says which is missing)
``GET /metrics``       Prometheus text, the app's own registry
``POST /admin/reload`` re-read fairstream.policies from the start (admin token)
``POST /admin/pin``    ``{version: int | null}``: serve a kept version / unpin (admin token)
``GET /openapi.json``  the OpenAPI 3.1 document, derived from the request and response
                       types (:mod:`stream.serve.openapi`); ``GET /docs`` renders it
``POST /admin/forget`` ``{user_id}``: erase a user (admin token): erasure markers on
                       fairstream.erasure, acknowledged, cached profile dropped → 202
``/admin/experiment``  ``GET``: the experiment in force; ``POST {name, arms, ...}``:
                       start one; ``POST .../shares|stop|promote|rollback``: change it
                       (admin token; versioned, on fairstream.experiments, see
                       :mod:`stream.serve.experiments`)
=====================  ==========================================================

User ids stop here: the handlers pass on only their pseudonyms, and of the attributes
only the gender code and age bucket (:mod:`stream.privacy`).

Every refusal is JSON ``{"error": reason, "detail": ...}`` with a 4xx (503 when
not ready or the log queue is full), never a 500 for bad input. Bodies are
decoded once by msgspec into typed records; the body size is capped before
it is read (413, ``serve.max_body_bytes``), and a body that has not arrived
``serve.body_timeout_s`` after the handler starts reading it is refused
(408, ``body_timeout``). ``POST /recommend`` bypasses Starlette's stack
(:class:`RecommendFastPath`).
Scoring runs on the event loop: it is ~0.2 ms of numpy, less than
a thread hop would cost.

>>> from starlette.testclient import TestClient
>>> client = TestClient(create_app(ServeContext(Recommender())))
>>> client.get("/healthz").json()
{'status': 'ok'}
>>> r = client.post("/recommend", content=b'{"user_id": "u1"}')
>>> r.status_code, r.json()["error"]
(503, 'not_ready')
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec
from kafka.errors import KafkaError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from stream.events import Click, EventCodec, Purchase
from stream.exceptions import ErasureNotWritten, InvalidEvent
from stream.experiments import Arm, Experiment, InvalidExperiment
from stream.metrics import ServeMetrics
from stream.privacy import Pseudonymizer
from stream.serve.attributes import check_user, name_the_attribute
from stream.serve.exceptions import BadRequest, ServeError, Unauthorized
from stream.serve.experiments import ExperimentControl
from stream.serve.impressions import EventLog, ProducerHealth
from stream.serve.recommender import Recommender
from stream.serve.schema import (
    ExperimentState,
    FeedbackAccepted,
    ForgetAccepted,
    Health,
    PinResult,
    ReloadAccepted,
)
from stream.settings import EventSettings, PrivacySettings, ServeSettings

log = logging.getLogger(__name__)

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
AttrKey = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
AttrValue = Annotated[str, msgspec.Meta(max_length=256)] | int
Attrs = Annotated[dict[AttrKey, AttrValue], msgspec.Meta(max_length=32)]


def _doc(text: str) -> msgspec.Meta:
    return msgspec.Meta(description=text)  # shows in /openapi.json and docs/api.md


class RecommendRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Whom to recommend to, among which items, and how many."""

    user_id: Annotated[Id, _doc("the user, as events key them")]
    user: Annotated[Attrs | None, _doc(
        "strings or integers; gender (M, F, male, female) and age (whole years 0-130, or "
        "a bucket such as 25-34) are read, and refused if unreadable; other keys are "
        "accepted and dropped here: only the gender code and age bucket go further")] = None
    candidates: Annotated[Annotated[list[Id], msgspec.Meta(min_length=1)] | None, _doc(
        "item ids to rank, no repeats; default: the whole catalog")] = None
    k: Annotated[int | None, _doc(
        "items to return; default: bandit.slate_size; at most serve.max_k and the "
        "number of candidates")] = None
    explain: Annotated[bool, _doc("also return each score in parts (explanations)")] = False


class FeedbackRequest(msgspec.Struct, forbid_unknown_fields=True):
    """What a user did with an item a /recommend answer showed them."""

    type: Literal["click", "purchase"]
    user_id: Annotated[Id, _doc("the user the item was shown to")]
    request_id: Annotated[Id, _doc("the request_id of the /recommend answer")]
    item_id: Annotated[Id, _doc("the item clicked or bought")]
    value: Annotated[float | None, _doc("a purchase's value (required for purchases)")] = None
    event_id: Annotated[Id | None, _doc(
        "give one to make retries idempotent (the worker drops repeats); default: fresh")] \
        = None
    ts: Annotated[float | None, _doc("event time, Unix seconds; default: now")] = None


class PinRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The version to serve, or null to follow the latest again."""

    version: int | None


class ForgetRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /admin/forget``: the user to erase, by the id the clients use."""

    user_id: Id


Reason = Annotated[str, msgspec.Meta(max_length=512)]


class ArmSpec(msgspec.Struct, forbid_unknown_fields=True):
    """One arm: its traffic share and what it changes (omitted: the served policy's)."""

    name: Annotated[str, _doc("lower-case letters, digits, `_.-`; at most 48")]
    share: Annotated[float, _doc("share of users, in [0, 1]; an experiment's sum to 1")]
    alpha: Annotated[float | None, _doc("exploration width (UCB policies)")] = None
    exploration: Annotated[Literal["ucb", "ts"] | None, _doc(
        "exploration kind (policies that have both, e.g. hybrid_serving)")] = None
    exposure_strength: Annotated[float | None, _doc(
        "exposure controller strength λ for this arm")] = None
    version: Annotated[int | None, _doc(
        "serve this kept published policy version (`serve.keep_versions`)")] = None


class ExperimentRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /admin/experiment``: a new experiment (a name never used before)."""

    name: str
    arms: Annotated[list[ArmSpec], msgspec.Meta(min_length=1, max_length=8)]
    control: Annotated[str, _doc("the control arm's name")] = "control"
    salt: Annotated[str, _doc("assignment salt; default: the name")] = ""
    auto_stop: Annotated[bool, _doc(
        "a guardrail breach stops the arm (its users go to control)")] = False


class SharesRequest(msgspec.Struct, forbid_unknown_fields=True):
    """New traffic shares for every arm of the running experiment (summing to 1)."""

    shares: dict[str, float]
    reason: Reason = ""


class ArmRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The arm to stop (its users go to control) or promote (it takes all traffic)."""

    arm: str
    reason: Reason = ""


class RollbackRequest(msgspec.Struct, forbid_unknown_fields=True):
    """End the running experiment: control takes all traffic."""

    reason: Reason = ""


@dataclass
class ServeContext:
    """What the handlers need; :class:`stream.serve.server.ServeRuntime` builds the real one."""

    recommender: Recommender
    settings: ServeSettings = field(default_factory=ServeSettings)
    metrics: ServeMetrics = field(default_factory=ServeMetrics)
    event_log: EventLog | None = None
    codec: EventCodec = field(default_factory=lambda: EventCodec(
        max_clock_skew_s=EventSettings().max_clock_skew_s))
    default_k: int = 5
    ready: Callable[[], dict[str, Any]] | None = None
    reload: Callable[[], None] | None = None
    pin: Callable[[int | None], Any] | None = None
    health: ProducerHealth | None = None
    forget: Callable[[str], int] | None = None
    #: online experiments (None: this server takes no experiment changes)
    experiments: ExperimentControl | None = None
    #: the edge: raw user ids and attributes stop here (see stream.privacy)
    edge: Pseudonymizer = field(
        default_factory=lambda: Pseudonymizer.from_settings(PrivacySettings()))


_JSON = "application/json"
_encode = msgspec.json.Encoder().encode
_recommend_decoder = msgspec.json.Decoder(RecommendRequest)
_feedback_decoder = msgspec.json.Decoder(FeedbackRequest)
_pin_decoder = msgspec.json.Decoder(PinRequest)
_forget_decoder = msgspec.json.Decoder(ForgetRequest)
_experiment_decoder = msgspec.json.Decoder(ExperimentRequest)
_shares_decoder = msgspec.json.Decoder(SharesRequest)
_arm_decoder = msgspec.json.Decoder(ArmRequest)
_rollback_decoder = msgspec.json.Decoder(RollbackRequest)
#: InvalidExperiment reasons that are conflicts with the state in force (409), not bad input
_CONFLICTS = frozenset({"duplicate_experiment", "experiment_running", "no_experiment",
                        "experiment_conflict"})


def _json(obj: Any, status: int = 200) -> Response:
    return Response(_encode(obj), status_code=status, media_type=_JSON)


def _error(exc: ServeError) -> Response:
    return _json({"error": exc.reason, "detail": exc.detail}, exc.status)


#: Event rejections the API reports under their own reason (the rest are invalid_field).
_OWN_REASONS = frozenset({"unknown_item", "clock_skew"})


def _decode(decoder: msgspec.json.Decoder, body: bytes) -> Any:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise BadRequest("invalid_field", name_the_attribute(str(exc), body)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # bad bytes inside a string
        raise BadRequest("malformed_json", str(exc)) from None


async def _read_limited(content_length: str | None, chunks: AsyncIterator[bytes],
                        limit: int, timeout_s: float) -> bytes:
    """A request body, refusing (413) anything over ``limit`` bytes before reading it all,
    and (408) a body still incomplete after ``timeout_s``."""
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise BadRequest("invalid_field", "Content-Length is not a number") from None
        if declared > limit:
            raise BadRequest("body_too_large", f"{declared} bytes > limit {limit}", 413)
    parts, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise BadRequest("body_too_large", f"more than {limit} bytes", 413)
                parts.append(chunk)
    except TimeoutError:
        raise BadRequest("body_timeout", f"request body incomplete after {timeout_s:g} s",
                         408) from None
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def _body(request: Request, limits: ServeSettings) -> bytes:
    return await _read_limited(request.headers.get("content-length"), request.stream(),
                               limits.max_body_bytes, limits.body_timeout_s)


class _ClientGone(Exception):
    """The client disconnected before its request body arrived: nobody to answer."""


async def _asgi_chunks(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        body = message.get("body", b"")
        if body:
            yield body
        if not message.get("more_body", False):
            return


_JSON_HEADERS = [(b"content-type", _JSON.encode())]


class RecommendFastPath:
    """``POST /recommend`` on bare ASGI in front of the Starlette app, which serves the rest.

    /recommend is the server's hot path. Starlette's middleware stack, router
    and Request/Response objects cost about 40 µs a call (a bare ASGI handler
    answered ~11,000 req/s where a Starlette one answered ~7,500 on the same
    2 cores), a tenth of a whole request. Validation, errors and metrics are
    the same as on every other endpoint: a :class:`ServeError` becomes its 4xx
    JSON, anything else a logged 500.
    """

    def __init__(self, app: ASGIApp, ctx: ServeContext,
                 recommend: Callable[[bytes], bytes]) -> None:
        self.app = app
        self.ctx = ctx
        self.recommend = recommend

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/recommend" \
                or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        m = self.ctx.metrics
        length = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value.decode("latin-1")
                break
        try:
            limits = self.ctx.settings
            body = await _read_limited(length, _asgi_chunks(receive), limits.max_body_bytes,
                                       limits.body_timeout_s)
            status, payload = 200, self.recommend(body)
        except _ClientGone:
            return
        except ServeError as exc:
            m.invalid_requests.labels(reason=exc.reason).inc()
            status, payload = exc.status, _encode({"error": exc.reason, "detail": exc.detail})
        except Exception:
            log.exception("POST /recommend failed")
            status, payload = 500, _encode({"error": "internal_error",
                                            "detail": "see the server log"})
        await send({"type": "http.response.start", "status": status,
                    "headers": [*_JSON_HEADERS, (b"content-length", b"%d" % len(payload))]})
        await send({"type": "http.response.body", "body": payload})
        m.request("recommend", status, time.perf_counter() - t0)


Handler = Callable[[Request], Awaitable[Response]]


def create_app(ctx: ServeContext) -> RecommendFastPath:
    """The ASGI app over ``ctx`` (pure: no Kafka here, so it tests with TestClient)."""
    m, rec, limits, edge = ctx.metrics, ctx.recommender, ctx.settings, ctx.edge

    def instrumented(endpoint: str, fn: Handler) -> Handler:
        async def handle(request: Request) -> Response:
            t0 = time.perf_counter()
            try:
                response = await fn(request)
            except ServeError as exc:
                m.invalid_requests.labels(reason=exc.reason).inc()
                response = _error(exc)
            m.request(endpoint, response.status_code, time.perf_counter() - t0)
            return response

        return handle

    def admin(fn: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            token = limits.admin_token
            if not token:
                raise Unauthorized("admin_disabled", "no admin token is configured", 403)
            given = request.headers.get("authorization", "")
            if not given.startswith("Bearer "):
                raise Unauthorized("unauthorized", "send 'Authorization: Bearer <token>'", 401)
            if not hmac.compare_digest(given[7:].encode(), token.encode()):
                raise Unauthorized("forbidden", "wrong admin token", 403)
            return await fn(request)

        return guarded

    def recommend(body: bytes) -> bytes:
        req: RecommendRequest = _decode(_recommend_decoder, body)
        check_user(req.user)  # the one rule for attributes (stream.serve.attributes)
        return _encode(rec.recommend(edge.user(req.user_id), edge.attrs(req.user),
                                     req.candidates,
                                     ctx.default_k if req.k is None else req.k,
                                     explain=req.explain))

    async def feedback(request: Request) -> Response:
        req: FeedbackRequest = _decode(_feedback_decoder,
                                       await _body(request, limits))
        common = {"event_id": req.event_id or uuid.uuid4().hex, "request_id": req.request_id,
                  "ts": time.time() if req.ts is None else req.ts,
                  "user_id": edge.user(req.user_id),
                  "item_id": req.item_id}
        if req.type == "purchase":
            if req.value is None:
                raise BadRequest("invalid_field", "a purchase needs a value")
            event: Click | Purchase = Purchase(value=req.value, **common)
        else:
            event = Click(**common)
        try:  # the worker's own validation (finite, ranges, known item), so it never DLQs
            ctx.codec.decode(ctx.codec.encode(event), known_items=rec._view.index)
        except InvalidEvent as exc:
            reason = exc.reason if exc.reason in _OWN_REASONS else "invalid_field"
            raise BadRequest(reason, exc.detail) from None
        if ctx.health is not None and not ctx.health.producing:
            raise BadRequest("kafka_unavailable", f"events do not reach Kafka "
                             f"({ctx.health.reason}); retry later", 503)
        if ctx.event_log is None or not ctx.event_log.submit(event):
            raise BadRequest("queue_full", "event log is full or absent; retry later", 503)
        rec.note_click(event.user_id, req.item_id)
        return _json(FeedbackAccepted(True, event.event_id), 202)

    async def healthz(_request: Request) -> Response:
        return _json(Health("ok"))

    async def readyz(_request: Request) -> Response:
        state = ctx.ready() if ctx.ready else {"ready": rec.ready}
        m.ready.set(1 if state["ready"] else 0)
        return _json(state, 200 if state["ready"] else 503)

    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)

    async def reload(_request: Request) -> Response:
        if ctx.reload is None:
            raise BadRequest("not_found", "no policy follower to reload", 404)
        ctx.reload()
        return _json(ReloadAccepted(True), 202)

    async def pin(request: Request) -> Response:
        req: PinRequest = _decode(_pin_decoder, await _body(request, limits))
        if ctx.pin is None:
            raise BadRequest("not_found", "no policy follower to pin", 404)
        bundle = ctx.pin(req.version)
        if bundle is None and req.version is not None:
            raise BadRequest("unknown_version", f"version {req.version} is not kept", 404)
        return _json(PinResult(req.version, rec.bundle.version if rec.bundle else None))

    async def openapi(_request: Request) -> Response:
        from stream.serve.openapi import openapi_json  # imports this module

        return Response(openapi_json(), media_type=_JSON)

    async def docs(_request: Request) -> Response:
        from stream.serve.apidoc import render_html

        return Response(render_html(), media_type="text/html")

    async def forget(request: Request) -> Response:
        req: ForgetRequest = _decode(_forget_decoder, await _body(request, limits))
        if ctx.forget is None:
            raise BadRequest("not_found", "no erasure topic to publish to", 404)
        try:  # publishing waits for Kafka's acknowledgement, off the event loop
            markers = await asyncio.to_thread(ctx.forget, req.user_id)
        except ErasureNotWritten as exc:
            raise BadRequest("kafka_unavailable", str(exc), 503) from None
        return _json(ForgetAccepted(True, markers), 202)

    def control() -> ExperimentControl:
        if ctx.experiments is None:
            raise BadRequest("not_found", "this server takes no experiment changes", 404)
        return ctx.experiments

    async def changed(change: Callable[[], Experiment]) -> Response:
        try:  # a change waits for Kafka's acknowledgement and its read-back: off the loop
            exp = await asyncio.to_thread(change)
        except InvalidExperiment as exc:
            raise BadRequest(exc.reason, exc.detail,
                             409 if exc.reason in _CONFLICTS else 400) from None
        except (KafkaError, TimeoutError) as exc:
            raise BadRequest("kafka_unavailable", f"experiment change not confirmed: {exc}",
                             503) from None
        return _json(ExperimentState(exp))

    async def experiment_get(_request: Request) -> Response:
        return _json(ExperimentState(control().current))

    async def experiment_create(request: Request) -> Response:
        req: ExperimentRequest = _decode(_experiment_decoder, await _body(request, limits))
        c = control()
        for arm in req.arms:
            served = rec.bundle.version if rec.bundle is not None else None
            if arm.version is not None and arm.version != served \
                    and rec.kept(arm.version) is None:
                raise BadRequest("unknown_version", f"arm {arm.name!r}: version "
                                 f"{arm.version} is not kept by this server", 404)
        exp = Experiment(name=req.name, control=req.control, salt=req.salt,
                         auto_stop=req.auto_stop,
                         arms=[Arm(name=a.name, share=a.share, alpha=a.alpha,
                                   exploration=a.exploration,
                                   exposure_strength=a.exposure_strength, version=a.version)
                               for a in req.arms])
        return await changed(lambda: c.create(exp))

    async def experiment_shares(request: Request) -> Response:
        req: SharesRequest = _decode(_shares_decoder, await _body(request, limits))
        c = control()
        return await changed(lambda: c.set_shares(req.shares, req.reason))

    async def experiment_stop(request: Request) -> Response:
        req: ArmRequest = _decode(_arm_decoder, await _body(request, limits))
        c = control()
        return await changed(lambda: c.stop(req.arm, req.reason))

    async def experiment_promote(request: Request) -> Response:
        req: ArmRequest = _decode(_arm_decoder, await _body(request, limits))
        c = control()
        return await changed(lambda: c.promote(req.arm, req.reason))

    async def experiment_rollback(request: Request) -> Response:
        req: RollbackRequest = _decode(_rollback_decoder, await _body(request, limits))
        c = control()
        return await changed(lambda: c.rollback(req.reason))

    async def not_found(request: Request, exc: Exception) -> Response:
        code = getattr(exc, "status_code", 404)
        reason = "method_not_allowed" if code == 405 else "not_found"
        response = _json({"error": reason, "detail": f"{request.method} {request.url.path}"},
                         code)
        m.invalid_requests.labels(reason=reason).inc()
        m.request("other", code, 0.0)
        return response

    async def recommend_route(request: Request) -> Response:
        # Reached only through the Starlette app itself (RecommendFastPath answers every
        # POST /recommend first); the route also gives other methods their 405.
        body = await _body(request, limits)
        return Response(recommend(body), media_type=_JSON)

    routes = [
        Route("/recommend", instrumented("recommend", recommend_route), methods=["POST"]),
        Route("/feedback", instrumented("feedback", feedback), methods=["POST"]),
        Route("/healthz", instrumented("healthz", healthz), methods=["GET"]),
        Route("/readyz", instrumented("readyz", readyz), methods=["GET"]),
        Route("/metrics", instrumented("metrics", metrics), methods=["GET"]),
        Route("/admin/reload", instrumented("admin", admin(reload)), methods=["POST"]),
        Route("/admin/pin", instrumented("admin", admin(pin)), methods=["POST"]),
        Route("/admin/forget", instrumented("admin", admin(forget)), methods=["POST"]),
        Route("/admin/experiment", instrumented("admin", admin(experiment_get)),
              methods=["GET"]),
        Route("/admin/experiment", instrumented("admin", admin(experiment_create)),
              methods=["POST"]),
        Route("/admin/experiment/shares", instrumented("admin", admin(experiment_shares)),
              methods=["POST"]),
        Route("/admin/experiment/stop", instrumented("admin", admin(experiment_stop)),
              methods=["POST"]),
        Route("/admin/experiment/promote", instrumented("admin", admin(experiment_promote)),
              methods=["POST"]),
        Route("/admin/experiment/rollback", instrumented("admin", admin(experiment_rollback)),
              methods=["POST"]),
        Route("/openapi.json", instrumented("other", openapi), methods=["GET"]),
        Route("/docs", instrumented("other", docs), methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found})
    return RecommendFastPath(app, ctx, recommend)
