"""Errors raised by the representation layer."""

from __future__ import annotations


class LearnersError(Exception):
    """Base class of every error ``learners`` raises on purpose."""


class DeviceUnavailable(LearnersError, RuntimeError):
    """The configured device setting asks for hardware this machine lacks."""


class FineTuneError(LearnersError, RuntimeError):
    """A background fine-tune failed; the cause is chained (``__cause__``)."""


class FineTuneTimeout(FineTuneError):
    """A fine-tune ran past its ``max_seconds`` and was stopped; it has no result."""
