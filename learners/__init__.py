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
    "ProfileStore",
    "ReplayBuffer",
    "ReplayRows",
    "refit_statistics",
    "resolve_device",
    "ridge_statistics",
    "user_groups",
]

