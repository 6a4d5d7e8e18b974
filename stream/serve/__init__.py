"""Serving: ``/recommend`` on the latest signed policy, impressions logged with propensities."""

from stream.serve.app import ServeContext, create_app
from stream.serve.exceptions import BadRequest, NotReady, ServeError, Unauthorized
from stream.serve.follower import CatalogFollower, FeedbackFollower, PolicyFollower
from stream.serve.impressions import EventLog
from stream.serve.recommender import Recommendation, Recommender, request_rng
from stream.serve.server import ServerThread, ServeRuntime, run_server

__all__ = [
    "BadRequest",
    "CatalogFollower",
    "EventLog",
    "FeedbackFollower",
    "NotReady",
    "PolicyFollower",
    "Recommendation",
    "Recommender",
    "ServeContext",
    "ServeError",
    "ServeRuntime",
    "ServerThread",
    "Unauthorized",
    "create_app",
    "request_rng",
    "run_server",
]

