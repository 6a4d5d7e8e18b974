"""Decision making for fairstream: bandit policies, slates with propensities,
fairness metrics and exposure control, signed policy snapshots.

Plain Python/numpy: no Kafka, HTTP or Prometheus, no I/O.
"""

from bandits.base import Policy, PolicyState, predicted_reward
from bandits.baselines import EpsilonGreedy, MostPopular, UniformRandom
from bandits.exceptions import (
    BanditsError,
    ChecksumError,
    FeatureSpaceMismatch,
    InvalidInput,
    SignatureError,
    SnapshotError,
    SnapshotFormatError,
)
from bandits.fairness import (
    ExposureController,
    FairnessReport,
    FairnessTracker,
    popularity_groups,
    position_weights,
)
from bandits.hybrid import HybridLinUCB, HybridTS
from bandits.hybrid_serving import HybridServing
from bandits.hybrid_stats import HybridStats
from bandits.linucb import LinUCB
from bandits.registry import policy_from_config, policy_from_state, with_exploration
from bandits.slates import Slate
from bandits.snapshot import dump_snapshot, load_snapshot, read_snapshot
from bandits.stats import SufficientStats
from bandits.thompson import LinearTS

__all__ = [
    "BanditsError",
    "ChecksumError",
    "EpsilonGreedy",
    "ExposureController",
    "FairnessReport",
    "FairnessTracker",
    "FeatureSpaceMismatch",
    "HybridLinUCB",
    "HybridServing",
    "HybridStats",
    "HybridTS",
    "InvalidInput",
    "LinUCB",
    "LinearTS",
    "MostPopular",
    "Policy",
    "PolicyState",
    "SignatureError",
    "Slate",
    "SnapshotError",
    "SnapshotFormatError",
    "SufficientStats",
    "UniformRandom",
    "dump_snapshot",
    "load_snapshot",
    "policy_from_config",
    "policy_from_state",
    "popularity_groups",
    "position_weights",
    "predicted_reward",
    "read_snapshot",
    "with_exploration",
]
