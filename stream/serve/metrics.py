"""The server's Prometheus metrics, on the app's own registry.

Names follow ``fairstream_serve_<what>_<unit>``; labels are bounded: endpoint
is a route name (or ``other``), code an HTTP status, reason one of
:data:`stream.serve.exceptions.REASONS` or a bundle-verification reason.
(To move into :mod:`stream.metrics` as ``ServeMetrics``; kept apart so the
worker's module is untouched.)

>>> m = ServeMetrics()
>>> m.request("recommend", 200, 0.001)
>>> m.registry.get_sample_value("fairstream_serve_requests_total",
...                             {"endpoint": "recommend", "code": "200"})
1.0
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from stream.serve.exceptions import REASONS

#: Route names used as the ``endpoint`` label (anything else is "other").
ENDPOINTS = ("recommend", "feedback", "healthz", "readyz", "metrics", "admin", "other")
#: Why a policy bundle was refused: stream.bundle.BundleError reasons.
BUNDLE_REASONS = ("format", "checksum", "signature", "policy")

_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


@dataclass
class ServeMetrics:
    """Every series ``fairstream serve`` exports; one instance per server."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "fairstream_serve_requests_total",
            "HTTP requests answered, by endpoint and status code.",
            ["endpoint", "code"], registry=r)
        self.request_seconds = Histogram(
            "fairstream_serve_request_duration_seconds",
            "Wall time from request parsed to response built, by endpoint.",
            ["endpoint"], buckets=_BUCKETS, registry=r)
        self.invalid_requests = Counter(
            "fairstream_serve_invalid_requests_total",
            "Requests refused with a 4xx/503, by reason.",
            ["reason"], registry=r)
        self.policy_version = Gauge(
            "fairstream_serve_policy_version",
            "Version of the policy bundle being served (0 = none yet).",
            registry=r)
        self.policy_swaps = Counter(
            "fairstream_serve_policy_swaps_total",
            "Times a newer verified policy replaced the served one.",
            registry=r)
        self.policy_rejected = Counter(
            "fairstream_serve_policy_rejected_total",
            "Policy bundles that failed verification, by reason.",
            ["reason"], registry=r)
        self.policy_loaded_at = Gauge(
            "fairstream_serve_policy_loaded_timestamp_seconds",
            "Unix time the served policy was swapped in.",
            registry=r)
        self.impressions_logged = Counter(
            "fairstream_serve_impressions_logged_total",
            "Impressions acknowledged by Kafka on fairstream.events.",
            registry=r)
        self.impressions_dropped = Counter(
            "fairstream_serve_impressions_dropped_total",
            "Impressions dropped because the log queue was full (requests never wait).",
            registry=r)
        self.feedback = Counter(
            "fairstream_serve_feedback_forwarded_total",
            "Click/purchase events acknowledged by Kafka, by type.",
            ["type"], registry=r)
        self.produce_errors = Counter(
            "fairstream_serve_produce_errors_total",
            "Events Kafka refused or timed out on (impressions and feedback).",
            registry=r)
        self.log_queue = Gauge(
            "fairstream_serve_log_queue_messages",
            "Events waiting in the in-process queue for the producer thread.",
            registry=r)
        self.catalog_items = Gauge(
            "fairstream_serve_catalog_items",
            "Items in the server's materialised catalog.",
            registry=r)
        self.profile_users = Gauge(
            "fairstream_serve_profile_users",
            "Users with a profile in the server's profile store.",
            registry=r)
        self.ready = Gauge(
            "fairstream_serve_ready",
            "1 when a verified policy and the catalog are loaded, else 0.",
            registry=r)
        for reason in REASONS:
            self.invalid_requests.labels(reason=reason)
        for reason in BUNDLE_REASONS:
            self.policy_rejected.labels(reason=reason)
        for kind in ("click", "purchase"):
            self.feedback.labels(type=kind)
        # Label children resolved once: the hot path then costs two lock-free-ish incs.
        self._children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    def request(self, endpoint: str, code: int, seconds: float) -> None:
        """Count one answered request and observe its duration."""
        key = (endpoint, code)
        pair = self._children.get(key)
        if pair is None:
            pair = (self.requests.labels(endpoint=endpoint, code=str(code)),
                    self.request_seconds.labels(endpoint=endpoint))
            self._children[key] = pair
        pair[0].inc()
        pair[1].observe(seconds)
