"""Errors raised by the stream layer; each says what happened.

Every error ``stream`` raises on purpose derives from :class:`FairstreamError`
(the serving layer's request errors too, :mod:`stream.serve.exceptions`).
``learners`` and ``bandits`` keep bases of their own (``LearnersError``, e.g. a
device that is not there; ``BanditsError``, e.g. a snapshot that fails its
signature); the CLI prints any of the three as one line, without a traceback.

>>> issubclass(CheckpointError, FairstreamError), BundleError("bad_signature", "x").reason
(True, 'bad_signature')
"""

from __future__ import annotations


class FairstreamError(Exception):
    """Base class of fairstream's stream-layer errors."""


class ConfigError(FairstreamError):
    """Settings are invalid; the message names the offending key."""


class InvalidEvent(FairstreamError):
    """An event failed to decode or validate.

    ``reason`` is one of a small fixed set (see :data:`stream.events.REASONS`);
    it is what the dead-letter record and the rejection counter carry, while
    ``detail`` says precisely what was wrong.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class FetchError(FairstreamError):
    """The worker's fetch process failed or went away."""


class OffsetOutOfRange(FairstreamError):
    """Checkpoint offsets lie outside what the broker holds for their partitions (it lost
    or trimmed the log), and ``worker.offset_out_of_range`` is ``"fail"``."""


class BrokerError(FairstreamError):
    """The embedded broker could not be started or did not become ready."""


class DataUnavailable(FairstreamError):
    """A data set is missing and could not be fetched."""


class CheckpointError(FairstreamError):
    """A checkpoint (or the published-version record beside it) exists but cannot be read."""


class DeltaError(FairstreamError):
    """A statistics delta failed verification or is malformed; ``reason`` says which
    (``format``, ``checksum``, ``signature``)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class BundleError(FairstreamError):
    """A published bundle failed verification or is malformed; ``reason`` says which."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class ErasureNotWritten(FairstreamError):
    """Kafka did not acknowledge an erasure marker: the user is not forgotten yet."""
