"""Settings of ``fairstream serve``: a typed section meant for :class:`stream.settings.Settings`.

Until ``Settings`` carries a ``serve`` section, :func:`serve_settings` falls
back to these defaults; once it does, ``FAIRSTREAM_SERVE__ADMIN_TOKEN`` (or
``[serve] admin_token`` in the TOML file) sets the admin token, like any key.

>>> s = ServeSettings(max_candidates=200)
>>> s.max_candidates, s.max_k, s.admin_token
(200, 50, '')
>>> check_serve_settings(ServeSettings(max_k=0))
Traceback (most recent call last):
...
stream.exceptions.ConfigError: serve.max_k must be in 1..50, got 0
"""

from __future__ import annotations

from typing import Any

import msgspec

from stream.exceptions import ConfigError

#: Largest slate a request may ask for (a bound, so a request's cost is bounded too).
MAX_K = 50


class ServeSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``[serve]``: HTTP limits, the admin token, the impression queue and the seed."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_candidates: int = 1000
    max_k: int = MAX_K
    max_body_bytes: int = 256 * 1024
    #: empty = admin endpoints disabled (403); set it from FAIRSTREAM_SERVE__ADMIN_TOKEN
    admin_token: str = ""
    #: events (impressions + feedback) waiting for the producer thread; beyond it they drop
    log_queue_size: int = 10_000
    #: per-request rng = default_rng([seed, request id]): reproducible from the log
    seed: int = 0
    #: verified bundles kept in memory for POST /admin/pin
    keep_versions: int = 16


def check_serve_settings(s: ServeSettings) -> ServeSettings:
    """Range checks (to join ``stream.settings._check_ranges`` when the section moves)."""
    positive = {"serve.max_candidates": s.max_candidates,
                "serve.max_body_bytes": s.max_body_bytes,
                "serve.log_queue_size": s.log_queue_size,
                "serve.keep_versions": s.keep_versions}
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be > 0, got {value}")
    if not 1 <= s.max_k <= MAX_K:
        raise ConfigError(f"serve.max_k must be in 1..{MAX_K}, got {s.max_k}")
    if not 0 <= s.port <= 65535:
        raise ConfigError(f"serve.port must be in 0..65535, got {s.port}")
    return s


def serve_settings(settings: Any) -> ServeSettings:
    """``settings.serve`` when the settings object has that section, else the defaults."""
    section = getattr(settings, "serve", None)
    return check_serve_settings(section if section is not None else ServeSettings())
