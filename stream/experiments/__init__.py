"""Online experiments: A/B splits between policy configurations, sticky assignment,
always-valid per-arm comparisons and guardrails. Pure: no Kafka, HTTP or Prometheus."""

from stream.experiments.assign import Router, assign, unit_hash
from stream.experiments.config import (
    MAX_ARMS,
    Arm,
    Experiment,
    ExperimentBook,
    decode_experiment,
    encode_experiment,
)
from stream.experiments.exceptions import InvalidExperiment

__all__ = ["MAX_ARMS", "Arm", "Experiment", "ExperimentBook", "InvalidExperiment", "Router",
           "assign", "decode_experiment", "encode_experiment", "unit_hash"]
