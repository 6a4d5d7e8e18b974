"""Representation: frozen encoder, user profiles, feature map φ, adapter fine-tune, drift."""

from learners.adapter import Adapter
from learners.device import resolve_device
from learners.drift import DriftMonitor
from learners.encoder import Encoder
from learners.exceptions import DeviceUnavailable, FineTuneError, FineTuneTimeout, LearnersError
from learners.features import FeatureMap, user_groups
from learners.finetune import FineTuner, FineTuneResult
from learners.profile_disk import DiskProfileStore
from learners.profiles import ProfileStore
from learners.refit import refit_statistics, ridge_statistics
from learners.replay import ReplayBuffer, ReplayRows
from learners.sample import PartitionSample, SampleRows, replay_rows, row_hashes

__all__ = [
    "Adapter",
    "DeviceUnavailable",
    "DiskProfileStore",
    "DriftMonitor",
    "Encoder",
    "FeatureMap",
    "FineTuneError",
    "FineTuneResult",
    "FineTuneTimeout",
    "FineTuner",
    "LearnersError",
    "PartitionSample",
    "ProfileStore",
    "ReplayBuffer",
    "ReplayRows",
    "SampleRows",
    "refit_statistics",
    "replay_rows",
    "resolve_device",
    "ridge_statistics",
    "row_hashes",
    "user_groups",
]

