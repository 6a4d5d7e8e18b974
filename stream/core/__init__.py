"""The learning core: catalog, reward join, learning state, checkpoints and policy bundles.

Pure logic over decoded events: nothing here imports Kafka, HTTP or Prometheus,
and nothing here imports from the rest of ``stream`` but the shared modules
(:mod:`stream.events`, :mod:`stream.settings`, :mod:`stream.exceptions`).
"""

from stream.core.bundle import BundleError, PolicyBundle, dump_bundle, load_bundle
from stream.core.catalog import Catalog
from stream.core.checkpoint import (
    Checkpoint,
    CheckpointError,
    read_checkpoint,
    write_atomic,
    write_checkpoint,
)
from stream.core.join import Pending, RewardJoiner, SeenIds
from stream.core.state import Learned, LearningState

__all__ = [
    "BundleError",
    "Catalog",
    "Checkpoint",
    "CheckpointError",
    "Learned",
    "LearningState",
    "Pending",
    "PolicyBundle",
    "RewardJoiner",
    "SeenIds",
    "dump_bundle",
    "load_bundle",
    "read_checkpoint",
    "write_atomic",
    "write_checkpoint",
]
