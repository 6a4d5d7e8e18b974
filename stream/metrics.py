"""Every Prometheus metric fairstream exports, defined in one place.

Names follow ``fairstream_<subsystem>_<what>_<unit>``; counters end in
``_total``, durations are ``_seconds`` histograms, and label values come from
small, bounded sets (event types, rejection reasons, partitions, configured
groups) — never a user or item id.

Each process builds one :class:`Metrics` on its own registry, so tests can run
several workers in one interpreter without colliding series.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class OptionalGauge(Gauge):
    """A gauge without labels that is absent until first set: after a restart "no data
    yet" is a missing series, not a 0 that reads as a perfect value.

    >>> r = CollectorRegistry()
    >>> g = OptionalGauge("fairstream_example_loss", "An example.", registry=r)
    >>> r.get_sample_value("fairstream_example_loss") is None
    True
    >>> g.set(0.25); r.get_sample_value("fairstream_example_loss")
    0.25
    """

    _has_value = False

    def set(self, value: float) -> None:
        self._has_value = True
        super().set(value)

    def _child_samples(self):  # type: ignore[no-untyped-def]
        return super()._child_samples() if self._has_value else ()


_LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)


@dataclass
class Metrics:
    """The worker's and server's metric families on one registry."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.events_consumed = Counter(
            "fairstream_events_consumed_total",
            "Valid events consumed from fairstream.events, by event type.",
            ["type"], registry=r,
        )
        self.events_rejected = Counter(
            "fairstream_events_rejected_total",
            "Events sent to the dead-letter topic, by rejection reason.",
            ["reason"], registry=r,
        )
        self.events_duplicate = Counter(
            "fairstream_events_duplicate_total",
            "Events ignored because their event_id was already processed.",
            registry=r,
        )
        self.serving_profiles_written = Counter(
            "fairstream_worker_serving_profiles_written_total",
            "Records sent to fairstream.profiles.serving, by kind (profile, tombstone; "
            "failed: not acknowledged).",
            ["kind"], registry=r,
        )
        for kind in ("profile", "tombstone", "failed"):
            self.serving_profiles_written.labels(kind=kind)
        self.bandit_updates = Counter(
            "fairstream_bandit_updates_total",
            "(features, reward) rows applied to the bandit's statistics.",
            registry=r,
        )
        self.bandit_update_seconds = Histogram(
            "fairstream_bandit_update_duration_seconds",
            "Wall time of one batched bandit update.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.consumer_lag = Gauge(
            "fairstream_consumer_lag_messages",
            "Messages between the worker's position and the partition's high watermark.",
            ["partition"], registry=r,
        )
        self.partial_model = Gauge(
            "fairstream_worker_partial_model",
            "1 while this worker, without the statistics exchange, owns only some events "
            "partitions: its policy is part of the model, and it does not publish it.",
            registry=r,
        )
        self.publishes_withheld = Counter(
            "fairstream_worker_publishes_withheld_total",
            "Policy publishes withheld because this worker owned only some events partitions "
            "and the statistics exchange is off.",
            registry=r,
        )
        self.offsets_out_of_range = Counter(
            "fairstream_worker_offsets_out_of_range_total",
            "Checkpoint offsets found outside the partition's range on the broker (it "
            "lost or trimmed the log), by partition.",
            ["partition"], registry=r,
        )
        self.checkpoint_age = Gauge(
            "fairstream_checkpoint_age_seconds",
            "Seconds since the last checkpoint of state and offsets was written.",
            registry=r,
        )
        self.checkpoints = Counter(
            "fairstream_checkpoints_total",
            "Checkpoints of state and offsets written.",
            registry=r,
        )
        self.profiles_held = Gauge(
            "fairstream_worker_profiles",
            "Users whose profiles the worker holds, in memory and on disk (as of the last "
            "checkpoint).",
            ["where"], registry=r)
        self.profile_spills = Counter(
            "fairstream_worker_profile_spills_total",
            "Profiles written to the disk store as they left memory "
            "(features.profile_capacity).",
            registry=r)
        self.checkpoint_seconds = Histogram(
            "fairstream_checkpoint_duration_seconds",
            "Wall time to write one checkpoint (atomic replace included).",
            registry=r,
        )
        self.impressions_joined = Counter(
            "fairstream_rewards_joined_total",
            "Shown items whose attribution window closed, by user group and traffic source "
            "(served by a policy, or replay of logged data).",
            ["user_group", "source"], registry=r,
        )
        self.reward_sum = Counter(
            "fairstream_rewards_sum_total",
            "Sum of rewards of shown items whose attribution window closed, by user group "
            "and traffic source.",
            ["user_group", "source"], registry=r,
        )
        self.exposure = Counter(
            "fairstream_exposure_total",
            "Position-weighted exposure given to shown items, by item group.",
            ["item_group"], registry=r,
        )
        self.catalog_items = Gauge(
            "fairstream_catalog_items",
            "Items in the worker's materialised catalog.",
            registry=r,
        )
        self.policy_version = Gauge(
            "fairstream_policy_version",
            "Version number of the worker's current policy.",
            registry=r,
        )
        self.policies_published = Counter(
            "fairstream_policy_published_total",
            "Signed policy bundles published to fairstream.policies.",
            registry=r,
        )
        self.policy_last_published = Gauge(
            "fairstream_policy_last_published_timestamp_seconds",
            "Unix time of the last policy publication.",
            registry=r,
        )
        self.exposure_disparity = OptionalGauge(
            "fairstream_fairness_exposure_disparity",
            "Exposure/merit disparity over item groups in the current window (0 = parity); "
            "absent until a window has data.",
            registry=r,
        )
        self.disparity_target = Gauge(
            "fairstream_fairness_disparity_target",
            "Configured target for the exposure/merit disparity.",
            registry=r,
        )
        self.reward_rate = Gauge(
            "fairstream_fairness_reward_rate",
            "Reward rate per user group in the current window.",
            ["user_group"], registry=r,
        )
        self.exposure_share = Gauge(
            "fairstream_fairness_exposure_share",
            "Position-weighted exposure share per item group in the current window.",
            ["item_group"], registry=r,
        )
        self.finetunes_started = Counter(
            "fairstream_finetunes_started_total",
            "Adapter fine-tunes started (in a child process, or a thread as a fallback).",
            registry=r,
        )
        self.finetunes = Counter(
            "fairstream_finetunes_total",
            "Adapter fine-tunes that ended, by outcome: swapped (adopted), rejected (no "
            "better), timed_out (stopped at finetune.max_seconds) or failed.",
            ["outcome"], registry=r,
        )
        self.finetune_failures = Counter(
            "fairstream_finetune_failures_total",
            "Adapter fine-tunes that raised an error.",
            registry=r,
        )
        self.finetune_seconds = Histogram(
            "fairstream_finetune_duration_seconds",
            "Wall time of one background adapter fine-tune.",
            buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600), registry=r,
        )
        self.finetune_loss = OptionalGauge(
            "fairstream_finetune_loss",
            "Replay-buffer log-loss of the reward model after the last fine-tune; absent "
            "until one ends.",
            registry=r,
        )
        self.finetune_loss_before = OptionalGauge(
            "fairstream_finetune_loss_before",
            "Replay-buffer log-loss of the reward model before the last fine-tune; absent "
            "until one ends.",
            registry=r,
        )
        self.finetune_reward = Gauge(
            "fairstream_finetune_reward",
            "Mean reward per shown item over the rows learned just before (phase=before) and "
            "just after (phase=after) the last adopted fine-tune.",
            ["phase"], registry=r,
        )
        self.drift_detected = Counter(
            "fairstream_drift_detected_total",
            "Reward-stream changes flagged by ADWIN, by segment (user group).",
            ["segment"], registry=r,
        )
        # Outcomes by who chose the slate (stream.worker.outcomes): source is "served" (a
        # policy's version) or "replay" (logged traffic); the last few versions are kept.
        self.policy_shown = Counter(
            "fairstream_policy_shown_total",
            "Shown items whose attribution window closed, by source and policy version.",
            ["source", "policy_version"], registry=r,
        )
        self.policy_reward = Counter(
            "fairstream_policy_reward_sum_total",
            "Sum of rewards of those items, by source and policy version.",
            ["source", "policy_version"], registry=r,
        )
        self.policy_clicked = Counter(
            "fairstream_policy_clicked_total",
            "Those items that got any click or purchase (CTR = clicked / shown), by source "
            "and policy version.",
            ["source", "policy_version"], registry=r,
        )
        self.feedback_unjoined = Counter(
            "fairstream_feedback_unjoined_total",
            "Feedback (or a repeated impression) that joined no open impression, by reason.",
            ["reason"], registry=r,
        )
        # Scale-out (docs/scaling.md): statistics deltas on fairstream.stats.
        self.stats_sent = Counter(
            "fairstream_stats_deltas_sent_total",
            "Statistics deltas this worker sent for the partitions it owns.", registry=r)
        self.stats_folded = Counter(
            "fairstream_stats_deltas_folded_total",
            "Other workers' statistics deltas folded into this worker's state.", registry=r)
        self.stats_skipped = Counter(
            "fairstream_stats_deltas_skipped_total",
            "Deltas not folded because this worker's state of the partition was elsewhere "
            "(its own, or already folded).", registry=r)
        self.stats_rejected = Counter(
            "fairstream_stats_deltas_rejected_total",
            "Deltas refused: unverifiable (format, checksum, signature) or of another "
            "feature space (feature_space).", ["reason"], registry=r)
        self.stats_conflicts = Counter(
            "fairstream_stats_conflicts_total",
            "Deltas from another worker for a partition this worker owns (a zombie).",
            registry=r)
        self.stats_lag = Gauge(
            "fairstream_stats_lag_messages",
            "Deltas on fairstream.stats not yet read by this worker.", registry=r)
        self.stats_restore_seconds = Histogram(
            "fairstream_stats_restore_duration_seconds",
            "Restoring one newly assigned partition's profiles from fairstream.profiles "
            "and the deltas after it.", registry=r,
            buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0))
        self.stats_restored_profiles = Counter(
            "fairstream_stats_restored_profiles_total",
            "Profiles installed by restores of newly assigned partitions.", registry=r)
        self.stats_publisher = Gauge(
            "fairstream_stats_publisher",
            "1 when this worker publishes the merged policy (it owns events partition 0).",
            registry=r)
        # One coordinated fine-tune across workers (docs/scaling.md): epochs and re-bases.
        self.stats_epoch = Gauge(
            "fairstream_stats_epoch",
            "The fine-tune epoch of the feature space this worker's policy is in (0: the "
            "group's first).", registry=r)
        self.stats_rebase_pending = Gauge(
            "fairstream_stats_rebase_pending_partitions",
            "Events partitions still to re-base into the epoch being switched to (0 when "
            "no switch is in progress).", registry=r)
        self.stats_epochs_started = Counter(
            "fairstream_stats_epochs_started_total",
            "Feature-space switches this worker began (announced, or read a marker of).",
            registry=r)
        self.stats_epochs_completed = Counter(
            "fairstream_stats_epochs_completed_total",
            "Feature-space switches this worker completed (every partition re-based).",
            registry=r)
        self.stats_rebases = Counter(
            "fairstream_stats_rebases_total",
            "Re-base markers handled, by outcome: rebased, switched (the last one), "
            "duplicate, old (an epoch already switched to), early (held behind the switch "
            "in progress), skipped, refused.", ["outcome"], registry=r)
        # Online experiments: series of the current experiment only (declare_experiment
        # removes the previous one's), at most MAX_ARMS arms: bounded labels.
        arm = ["experiment", "arm"]
        self.experiment_impressions = Counter(
            "fairstream_experiment_impressions_total",
            "Closed impressions of the running experiment, by arm.", arm, registry=r)
        self.experiment_reward = Counter(
            "fairstream_experiment_reward_sum_total",
            "Reward of the running experiment's closed impressions (each its slate's mean), "
            "by arm.", arm, registry=r)
        self.experiment_reward_mean = Gauge(
            "fairstream_experiment_reward_mean",
            "Mean reward per impression (slate mean) of each arm.", arm, registry=r)
        self.experiment_reward_diff = Gauge(
            "fairstream_experiment_reward_diff",
            "Arm minus control mean reward: the estimate and its always-valid interval "
            "(mSPRT, level experiment.error_rate), bound = estimate | lower | upper.",
            [*arm, "bound"], registry=r)
        self.experiment_disparity = Gauge(
            "fairstream_experiment_exposure_disparity",
            "Each arm's exposure/merit disparity over item groups (total variation).",
            arm, registry=r)
        self.experiment_share = Gauge(
            "fairstream_experiment_share",
            "Each arm's traffic share in force (a stopped arm: 0).", arm, registry=r)
        self.experiment_breached = Gauge(
            "fairstream_experiment_guardrail_breached",
            "1 while an arm is over a guardrail (reward below control beyond its interval, "
            "or disparity over fairness.disparity_target).",
            [*arm, "guardrail"], registry=r)
        self.experiment_stops = Counter(
            "fairstream_experiment_guardrail_stops_total",
            "Arms stopped by a guardrail (experiment.auto_stop): their users went to control.",
            arm, registry=r)
        self.experiment_breaches = Counter(
            "fairstream_experiment_guardrail_breaches_total",
            "Guardrail breaches detected (counted once per arm and guardrail).",
            [*arm, "guardrail"], registry=r)
        self._experiment: tuple[str, tuple[str, ...]] | None = None
        # Series that exist from the start read as 0, not as missing, so the first
        # increase shows up in rate() instead of hiding in a series' first sample.
        from stream.events import REASONS

        for kind in ("impression", "click", "purchase"):
            self.events_consumed.labels(type=kind)
        for reason in REASONS:
            self.events_rejected.labels(reason=reason)
        for outcome in ("swapped", "rejected", "timed_out", "failed"):
            self.finetunes.labels(outcome=outcome)
        from stream.core.join import UNJOINED

        for reason in UNJOINED:
            self.feedback_unjoined.labels(reason=reason)
        for reason in ("format", "checksum", "signature", "feature_space"):
            self.stats_rejected.labels(reason=reason)
        for outcome in ("rebased", "switched", "duplicate", "old", "early", "skipped",
                        "refused"):
            self.stats_rebases.labels(outcome=outcome)

    def declare_experiment(self, name: str, arms: Iterable[str]) -> None:
        """Create the experiment's series at 0 and drop the previous experiment's."""
        key = (name, tuple(arms))
        if self._experiment == key:
            return
        families = (self.experiment_impressions, self.experiment_reward,
                    self.experiment_reward_mean, self.experiment_disparity,
                    self.experiment_share, self.experiment_stops)
        if self._experiment is not None:
            old, old_arms = self._experiment
            for arm in old_arms:
                for family in families:
                    _remove(family, old, arm)
                for bound in ("estimate", "lower", "upper"):
                    _remove(self.experiment_reward_diff, old, arm, bound)
                for guardrail in ("reward", "disparity"):
                    _remove(self.experiment_breached, old, arm, guardrail)
                    _remove(self.experiment_breaches, old, arm, guardrail)
        self._experiment = key
        for arm in key[1]:
            for family in (self.experiment_impressions, self.experiment_reward,
                           self.experiment_stops):
                family.labels(name, arm)
            for guardrail in ("reward", "disparity"):
                self.experiment_breached.labels(name, arm, guardrail).set(0)
                self.experiment_breaches.labels(name, arm, guardrail)

    def declare_groups(self, user_groups: Iterable[str], item_groups: Iterable[str]) -> None:
        """Create the per-group series at 0 for the groups known up front."""
        for group in user_groups:
            for source in ("served", "replay"):
                self.impressions_joined.labels(user_group=group, source=source)
                self.reward_sum.labels(user_group=group, source=source)
            self.drift_detected.labels(segment=group)
        for group in item_groups:
            self.exposure.labels(item_group=group)


def _remove(family, *labels: str) -> None:  # type: ignore[no-untyped-def]
    with contextlib.suppress(KeyError):  # never created
        family.remove(*labels)


#: Route names used as the ``endpoint`` label (anything else is "other").
ENDPOINTS = ("recommend", "feedback", "healthz", "readyz", "metrics", "admin", "other")
#: Why a policy bundle was refused: stream.core.bundle.BundleError reasons.
BUNDLE_REASONS = ("format", "checksum", "signature", "policy")

_SERVE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


@dataclass
class ServeMetrics:
    """Every series ``fairstream serve`` exports; one instance per server."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        from stream.serve.exceptions import REASONS as SERVE_REASONS

        r = self.registry
        self.requests = Counter(
            "fairstream_serve_requests_total",
            "HTTP requests answered, by endpoint and status code.",
            ["endpoint", "code"], registry=r)
        self.request_seconds = Histogram(
            "fairstream_serve_request_duration_seconds",
            "Wall time from request parsed to response built, by endpoint.",
            ["endpoint"], buckets=_SERVE_BUCKETS, registry=r)
        self.invalid_requests = Counter(
            "fairstream_serve_invalid_requests_total",
            "Requests refused with a 4xx/503, by reason.",
            ["reason"], registry=r)
        self.policy_version = Gauge(
            "fairstream_serve_policy_version",
            "Version of the policy bundle being served (0 = none yet).",
            registry=r)
        self.policy_swaps = Counter(
            "fairstream_serve_policy_swaps_total",
            "Times a newer verified policy replaced the served one.",
            registry=r)
        self.policy_rejected = Counter(
            "fairstream_serve_policy_rejected_total",
            "Policy bundles that failed verification, by reason.",
            ["reason"], registry=r)
        self.policy_loaded_at = Gauge(
            "fairstream_serve_policy_loaded_timestamp_seconds",
            "Unix time the served policy was swapped in.",
            registry=r)
        self.impressions_logged = Counter(
            "fairstream_serve_impressions_logged_total",
            "Impressions acknowledged by Kafka on fairstream.events.",
            registry=r)
        self.impressions_dropped = Counter(
            "fairstream_serve_impressions_dropped_total",
            "Impressions dropped because the log queue was full (requests never wait).",
            registry=r)
        self.feedback = Counter(
            "fairstream_serve_feedback_forwarded_total",
            "Click/purchase events acknowledged by Kafka, by type.",
            ["type"], registry=r)
        self.produce_errors = Counter(
            "fairstream_serve_produce_errors_total",
            "Events Kafka refused or timed out on (impressions and feedback).",
            registry=r)
        self.log_queue = Gauge(
            "fairstream_serve_log_queue_messages",
            "Events waiting in the in-process queue for the producer thread.",
            registry=r)
        self.catalog_items = Gauge(
            "fairstream_serve_catalog_items",
            "Items in the server's materialised catalog.",
            registry=r)
        self.profile_users = Gauge(
            "fairstream_serve_profile_users",
            "Users with a profile in the server's profile store.",
            registry=r)
        self.follow_records = Counter(
            "fairstream_serve_follow_records_total",
            "Records the server read to keep profiles current, by topic (its profile "
            "source: fairstream.profiles.serving or fairstream.events).",
            ["topic"], registry=r)
        self.follow_bytes = Counter(
            "fairstream_serve_follow_bytes_total",
            "Bytes of record values the server read to keep profiles current, by topic.",
            ["topic"], registry=r)
        self.profile_records = Counter(
            "fairstream_serve_profile_records_total",
            "Records of fairstream.profiles.serving applied or not, by outcome (profile, "
            "tombstone, erased: predates its user's erasure, invalid).",
            ["outcome"], registry=r)
        self.profile_freshness = Histogram(
            "fairstream_serve_profile_freshness_seconds",
            "When a serving profile is applied: now minus the event time of the latest "
            "feedback it reflects (how far the served profiles trail the events).",
            buckets=(0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800, 3600, 86_400),
            registry=r)
        self.ready = Gauge(
            "fairstream_serve_ready",
            "1 when a verified policy and the catalog are loaded, else 0.",
            registry=r)
        self.experiment_version = Gauge(
            "fairstream_serve_experiment_version",
            "Version of the experiment configuration in force (0 = none).", registry=r)
        self.experiment_changes = Counter(
            "fairstream_serve_experiment_changes_total",
            "Experiment versions adopted, by who made them (settings, admin, guardrail).",
            ["by"], registry=r)
        self.experiment_share = Gauge(
            "fairstream_serve_experiment_share",
            "Each arm's traffic share in this server (a stopped arm: 0); the current "
            "experiment's only.", ["experiment", "arm"], registry=r)
        self._experiment: tuple[str, tuple[str, ...]] | None = None
        for by in ("settings", "admin", "guardrail", "other"):
            self.experiment_changes.labels(by=by)
        for reason in SERVE_REASONS:
            self.invalid_requests.labels(reason=reason)
        for reason in BUNDLE_REASONS:
            self.policy_rejected.labels(reason=reason)
        for kind in ("click", "purchase"):
            self.feedback.labels(type=kind)
        for outcome in ("profile", "tombstone", "erased", "invalid"):
            self.profile_records.labels(outcome=outcome)
        # Label children resolved once: the hot path then costs two lock-free-ish incs.
        self._children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    def declare_experiment(self, exp) -> None:  # type: ignore[no-untyped-def]
        """Set each arm's share of ``exp`` (an Experiment); drop the previous one's series."""
        key = (exp.name, tuple(a.name for a in exp.arms))
        if self._experiment is not None and self._experiment != key:
            for arm in self._experiment[1]:
                _remove(self.experiment_share, self._experiment[0], arm)
        self._experiment = key
        for arm, share in exp.shares().items():
            self.experiment_share.labels(exp.name, arm).set(share)

    def request(self, endpoint: str, code: int, seconds: float) -> None:
        """Count one answered request and observe its duration."""
        key = (endpoint, code)
        pair = self._children.get(key)
        if pair is None:
            pair = (self.requests.labels(endpoint=endpoint, code=str(code)),
                    self.request_seconds.labels(endpoint=endpoint))
            self._children[key] = pair
        pair[0].inc()
        pair[1].observe(seconds)
