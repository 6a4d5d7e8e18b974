"""Range checks on settings beyond :func:`stream.settings._check_ranges`, and errors that
name the environment variable a bad value came from.

Every float setting must be finite; ports lie in 0..65535 (0: any free port);
``kafka.bootstrap`` is a list of ``host:port``; the rest are bounds per key
(:data:`BOUNDS`). A value set through ``FAIRSTREAM_<SECTION>__<KEY>`` is named
by that variable in the error, since that is what the user typed.

>>> from stream.settings import load_settings
>>> load_settings(env={"FAIRSTREAM_BANDIT__ALPHA": "-3"})
Traceback (most recent call last):
...
stream.exceptions.ConfigError: FAIRSTREAM_BANDIT__ALPHA=-3: bandit.alpha must be >= 0, got -3.0
>>> load_settings(env={"FAIRSTREAM_BANDIT__ALPHA": "wide"})
Traceback (most recent call last):
...
stream.exceptions.ConfigError: FAIRSTREAM_BANDIT__ALPHA=wide: bandit.alpha: expected `float`, ...
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from stream.exceptions import ConfigError

if TYPE_CHECKING:
    from stream.settings import Settings

#: key -> (lowest allowed, whether the lowest itself is allowed)
BOUNDS: dict[str, tuple[float, bool]] = {
    "kafka.session_timeout_ms": (0, False),
    "events.click_weight": (0, True),
    "events.purchase_weight": (0, True),
    "events.dedup_capacity": (0, False),
    "model.batch_size": (0, False),
    "bandit.alpha": (0, True),
    "bandit.v": (0, True),
    "worker.checkpoint_every_s": (0, False),
    "worker.serving_profiles_every_s": (0, False),
    "worker.log_every_s": (0, True),
    "worker.poll_timeout_ms": (0, False),
    "worker.dlq_max_request_bytes": (0, False),
    "policy.max_bundle_bytes": (0, False),
    "policy.publish_every_s": (0, False),
    "finetune.every_updates": (0, True),
    "finetune.every_s": (0, True),
    "fairness.disparity_target": (0, True),
}
PORTS = ("worker.metrics_port", "serve.port")


def _get(s: Settings, key: str) -> Any:
    section, _, name = key.partition(".")
    return getattr(getattr(s, section), name)


def check_more_ranges(s: Settings) -> None:
    """Raise :class:`ConfigError` naming the first key out of its range."""
    for section, values in _items(s):
        for name, value in values:
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{section}.{name} must be a finite number, got {value}")
    for key, (low, inclusive) in BOUNDS.items():
        value = _get(s, key)
        if value < low or (value == low and not inclusive):
            raise ConfigError(f"{key} must be {'>=' if inclusive else '>'} {low:g}, got {value}")
    for key in PORTS:
        value = _get(s, key)
        if not 0 <= value <= 65535:
            raise ConfigError(f"{key} must be in 0..65535 (0: any free port), got {value}")
    from stream.preflight import bootstrap_servers

    try:
        bootstrap_servers(s.kafka.bootstrap)
    except ValueError as exc:
        raise ConfigError(f"kafka.bootstrap: {exc}") from None


def _items(s: Settings):
    import msgspec

    for field in msgspec.structs.fields(s):
        section = getattr(s, field.name)
        yield field.name, [(f.name, getattr(section, f.name))
                           for f in msgspec.structs.fields(section)]


_AT = re.compile(r"^invalid settings: (.*) - at `\$\.(\w+)\.(\w+)`$")


def name_the_source(message: str, env: Mapping[str, str], path: object = None) -> str:
    """Rewrite a settings error about a key so it names where the value came from: the
    environment variable and its value, or the settings file ``path``.

    >>> name_the_source("bandit.alpha must be >= 0, got -3.0", {"FAIRSTREAM_BANDIT__ALPHA": "-3"})
    'FAIRSTREAM_BANDIT__ALPHA=-3: bandit.alpha must be >= 0, got -3.0'
    """
    from stream.preflight import env_name

    at = _AT.match(message)
    if at:  # msgspec's "Expected `float`, got `str` - at `$.bandit.alpha`"
        what, key = at.group(1), f"{at.group(2)}.{at.group(3)}"
        message = f"{key}: {what[0].lower()}{what[1:]}"
    else:
        found = re.match(r"^([a-z_]+\.[a-z_]+)\b", message)
        if not found:
            return message
        key = found.group(1)
    name = env_name(key)
    if name in env:
        return f"{name}={env[name]}: {message}"
    return message if path is None else f"{message} (in {path})"
