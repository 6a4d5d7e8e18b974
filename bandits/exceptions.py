"""Exceptions raised by :mod:`bandits`.

Every error the package raises on purpose derives from :class:`BanditsError`,
so a caller (the worker, the serving API) can tell "the bandit refused this"
apart from a programming error. Snapshot problems all derive from
:class:`SnapshotError`; its subclasses say *what* was wrong, which is what a
rejection counter or a log line should carry (``exc.reason``).
"""

from __future__ import annotations


class BanditsError(Exception):
    """Base class of every error raised on purpose by :mod:`bandits`."""

    reason: str = "bandits_error"


class InvalidInput(BanditsError, ValueError):
    """An array or argument passed to a policy has the wrong shape, type or value."""

    reason = "invalid_input"


class FeatureSpaceMismatch(BanditsError, ValueError):
    """Statistics, snapshots or policies from different feature spaces were combined.

    Adding ``φφᵀ`` computed under one feature map to statistics computed under
    another gives a meaningless model, so it is refused instead.
    """

    reason = "feature_space_mismatch"

    def __init__(self, expected: str, got: str) -> None:
        super().__init__(f"feature space mismatch: expected {expected!r}, got {got!r}")
        self.expected = expected
        self.got = got


class SnapshotError(BanditsError):
    """A policy snapshot could not be loaded (base class; never raised itself)."""

    reason = "snapshot_error"


class SnapshotFormatError(SnapshotError):
    """The bytes are not a snapshot this code can read (truncated, garbage, unknown format)."""

    reason = "snapshot_format"


class ChecksumError(SnapshotError):
    """The SHA-256 checksum of the snapshot does not match its content (corruption)."""

    reason = "snapshot_checksum"


class SignatureError(SnapshotError):
    """The HMAC-SHA256 signature does not verify (tampering or wrong key)."""

    reason = "snapshot_signature"
