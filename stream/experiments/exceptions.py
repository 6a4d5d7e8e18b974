"""Errors of the experiments package."""

from __future__ import annotations


class InvalidExperiment(ValueError):
    """An experiment configuration or change that is refused; ``reason`` is a short code
    (``invalid_shares``, ``unknown_arm``, ``duplicate_experiment``, ...), ``detail`` says
    what exactly. The configuration in force is left as it was."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
