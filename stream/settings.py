"""The one settings object: a TOML file plus ``FAIRSTREAM_*`` environment overrides.

Sections map to typed records; an unknown key anywhere (file or environment) is
an error that names it. Environment variables use a double underscore between
section and key, e.g. ``FAIRSTREAM_KAFKA__BOOTSTRAP=kafka:9092``.

>>> s = load_settings(env={"FAIRSTREAM_KAFKA__EVENTS_PARTITIONS": "8"})
>>> s.kafka.events_partitions, s.topics.events
(8, 'fairstream.events')
>>> load_settings(env={"FAIRSTREAM_KAFKA__BOOTSRAP": "x"})
Traceback (most recent call last):
...
stream.exceptions.ConfigError: unknown setting kafka.bootsrap (from FAIRSTREAM_KAFKA__BOOTSRAP)
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from stream.exceptions import ConfigError

ENV_PREFIX = "FAIRSTREAM_"


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "fairstream")


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class KafkaSettings(_Section):
    bootstrap: str = "127.0.0.1:9092"
    events_partitions: int = 4
    group_id: str = "fairstream-workers"
    client_id: str = "fairstream"
    session_timeout_ms: int = 10_000


class TopicSettings(_Section):
    prefix: str = "fairstream"

    @property
    def items(self) -> str:
        return f"{self.prefix}.items"

    @property
    def events(self) -> str:
        return f"{self.prefix}.events"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}.events.dlq"

    @property
    def policies(self) -> str:
        return f"{self.prefix}.policies"

    @property
    def fairness(self) -> str:
        return f"{self.prefix}.fairness"

    @property
    def stats(self) -> str:
        return f"{self.prefix}.stats"

    @property
    def erasure(self) -> str:
        return f"{self.prefix}.erasure"

    @property
    def profiles(self) -> str:
        return f"{self.prefix}.profiles"

    @property
    def experiments(self) -> str:
        return f"{self.prefix}.experiments"

    @property
    def serving_profiles(self) -> str:
        """Each user's latest profile for servers (compacted, key = user id)."""
        return f"{self.prefix}.profiles.serving"

    def all(self) -> list[str]:
        return [self.items, self.events, self.dlq, self.policies, self.fairness, self.stats,
                self.erasure, self.profiles, self.experiments, self.serving_profiles]


class EventSettings(_Section):
    max_bytes: int = 64 * 1024
    max_slate: int = 100
    attribution_window_s: float = 1800.0
    click_weight: float = 1.0
    purchase_weight: float = 1.0
    dedup_capacity: int = 500_000
    # Events stamped further ahead of the receiver's clock are rejected as clock_skew
    # (at the server and in the worker): event time drives the reward join's watermark.
    max_clock_skew_s: float = 300.0


class DataSettings(_Section):
    cache_dir: str = msgspec.field(default_factory=_default_cache_dir)


class ModelSettings(_Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = 64
    embedding_cache: str = ""  # empty: <data.cache_dir>/embeddings


class FeatureSettings(_Section):
    dim: int = 64
    profile_decay: float = 0.9
    #: profiles held in memory (least recently observed leave first: evicted by the
    #: memory store, written to disk by a disk store)
    profile_capacity: int = 100_000
    #: where a worker keeps its partitions' profiles with stats.exchange on: "rocksdb" or
    #: "sqlite" (profile_capacity in memory, the rest on disk), "memory" (all in memory,
    #: beyond profile_capacity evicted); "auto": rocksdb with the exchange, else memory.
    #: Without the exchange profiles live in the checkpoint, in memory.
    profile_store: Literal["auto", "memory", "rocksdb", "sqlite"] = "auto"
    #: a disk store's directory (emptied at worker start: a cache of the profiles'
    #: changelog); empty: beside the checkpoint, <checkpoint file>.profiles
    profile_dir: str = ""
    seed: int = 0

    def store(self, exchange: bool) -> str:
        """The profile store a worker uses: "memory", "rocksdb" or "sqlite".

        >>> FeatureSettings().store(exchange=True), FeatureSettings().store(exchange=False)
        ('rocksdb', 'memory')
        """
        if self.profile_store == "auto":
            return "rocksdb" if exchange else "memory"
        return self.profile_store


class BanditSettings(_Section):
    # hybrid_linucb: a shared model over φ plus per-item terms (see bandits.hybrid); it
    # beat every peer and the shared-only policies in `fairstream eval sim` (README).
    algorithm: Literal["hybrid_linucb", "hybrid_ts", "linucb", "ts", "egreedy"] = \
        "hybrid_linucb"
    alpha: float = 0.3
    lam: float = 1.0
    gamma: float = 1.0
    epsilon: float = 0.0
    v: float = 0.3
    slate_size: int = 5
    seed: int = 0
    # Hybrid policies: per-item terms over the user's attributes and a bias ("attributes")
    # or a bias alone ("bias"), for at most max_items items (least recently updated
    # evicted; an evicted or new item is scored by the shared model from its embedding).
    item_context: Literal["attributes", "bias"] = "attributes"
    max_items: int = 20_000


class WorkerSettings(_Section):
    # Empty: <data.cache_dir>/worker/<kafka.group_id>/checkpoint.npz (one per group, the
    # same wherever the worker starts); a second worker on one checkpoint refuses to start.
    checkpoint_path: str = ""
    checkpoint_every_events: int = 20_000
    checkpoint_every_s: float = 30.0
    metrics_port: int = 9100
    metrics_host: str = "127.0.0.1"
    log_every_s: float = 30.0  # a progress line (events/s, rows, lag, version, reward); 0 = off
    poll_max_records: int = 10_000  # larger polls: ~1.8x events/s learned (bench pipeline)
    poll_timeout_ms: int = 200
    # How long a fetch may wait at the broker for data: the floor of event-to-policy
    # latency on a quiet stream (Tansu holds a fetch this long even with data ready).
    fetch_max_wait_ms: int = 50
    # A rejected value larger than this goes to the DLQ as a marker (size, SHA-256, first
    # bytes); below the producer's request limit, so a dead letter can always be sent.
    dlq_max_value_bytes: int = 512 * 1024
    dlq_max_request_bytes: int = 1_048_576
    dlq_retries: int = 3
    # A checkpoint offset outside a partition's range on the broker (beyond its high-water
    # mark, or below its log start: the broker lost or trimmed the log). "fail": stop with
    # an error naming the partition and both ranges; "earliest": resume from the log start.
    offset_out_of_range: Literal["fail", "earliest"] = "fail"
    # How often the worker writes the serving profiles of the users whose profile moved
    # since (fairstream.profiles.serving: each user at most once per interval, so the
    # topic's rate is bounded by changed users, not by events; docs/scaling.md).
    serving_profiles_every_s: float = 1.0


#: The built-in signing key: for ``fairstream demo`` and the tests only (the worker and
#: the server refuse it, :func:`stream.core.keys.refuse_dev_key`).
DEV_SIGNING_KEY = "fairstream-dev-key-change-me"


class PolicySettings(_Section):
    signing_key: str = DEV_SIGNING_KEY
    # Comma-separated keys also accepted when verifying (a rotation's old or next key).
    verify_keys: str = ""
    # Largest signed bundle the worker may publish (producer request size and the
    # policies topic's max.message.bytes); checked against bandit.max_items at start.
    max_bundle_bytes: int = 16 * 1024 * 1024
    publish_every_updates: int = 5_000
    publish_every_s: float = 10.0


#: The built-in pseudonym key: for ``fairstream demo`` and the tests only.
DEV_PSEUDONYM_KEY = "fairstream-dev-pseudonym-key"


class PrivacySettings(_Section):
    """``[privacy]``: pseudonyms at the edge and how long raw events are kept (see the
    README's "Privacy"). The key belongs to the edge (server, producers, ``fairstream
    forget``) and never to workers."""

    pseudonym_key: str = DEV_PSEUDONYM_KEY
    #: comma-separated keys of before a rotation: ``fairstream forget`` erases the
    #: pseudonyms they made too, until profiles under them have aged out
    previous_pseudonym_keys: str = ""
    #: retention.ms of fairstream.events and its DLQ (append-only: erasure cannot reach them)
    events_retention_s: float = 7 * 86_400.0


class FineTuneSettings(_Section):
    enabled: bool = True
    every_updates: int = 20_000   # bandit rows learned between fine-tunes (0 = never)
    every_s: float = 0.0          # also every this many seconds (0 = off)
    steps: int = 200
    batch_size: int = 256
    lr: float = 1e-3
    buffer_capacity: int = 50_000
    # Below this many buffered rows a fine-tune (drift-triggered too) waits: the adapter
    # has ~7,000 weights at dim 64, and 5,000 rows is what its log-loss is measured on.
    min_rows: int = 5_000
    max_seconds: float = 300.0    # a run still going after this is stopped and counted
    # The most recent rows, held out of the rebuilt bandit: a swap is adopted only if the
    # rebuilt bandit predicts them no worse than the current one did before learning them.
    validation_rows: int = 5_000
    duty_cycle: float = 0.0       # thread fallback only: share of wall time; 0 = auto
    drift_delta: float = 0.002    # ADWIN confidence; a detected shift triggers a fine-tune


class StatsSettings(_Section):
    """``[stats]``: several workers, one policy (docs/scaling.md). With ``exchange`` on,
    each worker sends its partitions' statistics deltas to ``fairstream.stats``, folds
    the others', and only the owner of events partition 0 publishes."""

    exchange: bool = False
    emit_every_s: float = 5.0          # also at every checkpoint and before a revocation
    max_delta_bytes: int = 64 * 1024 * 1024
    # The deltas' Kafka compression (the producer's compression.type). A hybrid delta's
    # per-item blocks are mostly zeros (rows of attribute codes an item's users lack):
    # LZ4 sends 43 % of the bytes for ~4 ms per 7 MB delta (docs/scaling.md, "Measured").
    compression: Literal["lz4", "gzip", "none"] = "lz4"


class FairnessSettings(_Section):
    window: int = 1_000
    disparity_target: float = 0.1
    # FairCo exposure controller strength λ at serving time (0 = off). The deficit it
    # scales accumulates, so small values suffice: on MovieLens, with the hybrid policy and
    # the "candidates" target, λ = 4e-5 cut the tail's exposure disparity by two thirds
    # (0.054 → 0.017) for 0.1 % reward, λ = 0.01 by 99.6 % for 0.5 % (`fairstream eval sim`).
    exposure_strength: float = 0.0
    # What the controller pushes each item group's exposure toward: "candidates" (its
    # share of the request's candidates: equal exposure, whatever the policy learnt of the
    # group) or "merit" (its share of the policy's estimated relevance, FairCo's
    # disparate exposure; the hybrid learns tail items are liked less, so "merit" then
    # lowers the tail's exposure further).
    exposure_target: Literal["merit", "candidates"] = "candidates"


#: Largest slate a request may ask for (a bound, so a request's cost is bounded too).
MAX_K = 50


class ServeSettings(_Section):
    """``[serve]``: HTTP limits, the admin token, the impression queue and the seed."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_candidates: int = 1000
    max_k: int = MAX_K
    max_body_bytes: int = 256 * 1024
    #: a request body must arrive within this many seconds of the handler's first read,
    #: else 408: a client that trickles its body cannot hold a connection for ever
    body_timeout_s: float = 10.0
    #: a request's headers must be complete within this many seconds of its first byte
    #: (of the connection, for its first request), else 408 and the connection closes:
    #: a client that sends its headers slowly cannot hold a connection either
    header_timeout_s: float = 10.0
    #: empty = admin endpoints disabled (403); set it from FAIRSTREAM_SERVE__ADMIN_TOKEN
    admin_token: str = ""
    #: events (impressions + feedback) waiting for the producer thread; beyond it they drop
    log_queue_size: int = 10_000
    #: per-request rng = default_rng([seed, request id]): reproducible from the log
    seed: int = 0
    #: Impression discounting (stream.core.recent): an item this server showed a user, not
    #: clicked since, loses this much score for impression_discount_ttl_s seconds (0 = off).
    #: Scores are rewards in [0, 1] plus exploration, so 1.0 all but excludes it.
    impression_discount: float = 1.0
    impression_discount_ttl_s: float = 86_400.0
    impression_discount_items: int = 50      # per user, newest kept
    impression_discount_users: int = 20_000  # least recently served dropped first
    #: verified bundles kept in memory for POST /admin/pin
    keep_versions: int = 16
    #: an event not acknowledged by Kafka within this is a failed send (kafka-python's
    #: default is two minutes: a broker outage would go unnoticed that long)
    produce_timeout_ms: int = 10_000
    #: consecutive failed sends after which the server is not ready and /feedback answers
    #: 503 kafka_unavailable; the next acknowledged send makes it ready again
    produce_failures_unready: int = 1
    #: where user profiles come from: "topic" reads the workers' compacted
    #: fairstream.profiles.serving (a server's reads grow with its users' changes, not with
    #: all traffic; a fresh server starts with every profile); "events" folds every
    #: click/purchase of fairstream.events itself (reads every event; docs/scaling.md)
    profiles: Literal["topic", "events"] = "topic"


class ExperimentArmSettings(_Section):
    """One arm of ``[experiment]``: ``name``, ``share`` and what it changes (unset: the
    served policy's): ``alpha``, ``exploration`` (ucb / ts), ``exposure_strength``, a
    pinned published policy ``version``."""

    name: str
    share: float
    alpha: float | None = None
    exploration: Literal["ucb", "ts"] | None = None
    exposure_strength: float | None = None
    version: int | None = None


class ExperimentSettings(_Section):
    """``[experiment]``: an online experiment between policy configurations (``name``
    empty: none from settings; the admin API starts, changes and ends them at run time,
    on the ``<prefix>.experiments`` topic, see stream.experiments)."""

    name: str = ""
    control: str = "control"
    #: assignment salt (empty: the name)
    salt: str = ""
    arms: list[ExperimentArmSettings] = msgspec.field(default_factory=list)
    #: a guardrail breach stops the arm (its users go to control); false: flagged only
    auto_stop: bool = False
    #: level of the always-valid intervals (type-I error under continuous monitoring)
    error_rate: float = 0.05
    #: τ of the mSPRT normal mixture: the size of reward differences that matter
    mixture_sd: float = 0.05
    #: closed impressions per arm before the disparity guardrail may fire
    min_impressions: int = 200
    #: users per arm before an arm's interval is finite: the plug-in variance needs
    #: enough of them (in the MovieLens A/A test over 50 seeds, 2 gave a false-positive
    #: rate of 0.22, 20 gave 0.02)
    min_users: int = 20
    #: how often the worker checks guardrails and publishes the results
    results_every_s: float = 10.0


class Settings(_Section):
    kafka: KafkaSettings = msgspec.field(default_factory=KafkaSettings)
    topics: TopicSettings = msgspec.field(default_factory=TopicSettings)
    events: EventSettings = msgspec.field(default_factory=EventSettings)
    data: DataSettings = msgspec.field(default_factory=DataSettings)
    model: ModelSettings = msgspec.field(default_factory=ModelSettings)
    features: FeatureSettings = msgspec.field(default_factory=FeatureSettings)
    bandit: BanditSettings = msgspec.field(default_factory=BanditSettings)
    worker: WorkerSettings = msgspec.field(default_factory=WorkerSettings)
    policy: PolicySettings = msgspec.field(default_factory=PolicySettings)
    fairness: FairnessSettings = msgspec.field(default_factory=FairnessSettings)
    finetune: FineTuneSettings = msgspec.field(default_factory=FineTuneSettings)
    privacy: PrivacySettings = msgspec.field(default_factory=PrivacySettings)
    stats: StatsSettings = msgspec.field(default_factory=StatsSettings)
    serve: ServeSettings = msgspec.field(default_factory=ServeSettings)
    experiment: ExperimentSettings = msgspec.field(default_factory=ExperimentSettings)

    @property
    def embedding_cache_dir(self) -> Path:
        return Path(self.model.embedding_cache or Path(self.data.cache_dir) / "embeddings")

    def replace(self, **sections: Mapping[str, Any]) -> Settings:
        """A copy with some keys of some sections changed, validated like a file.

        >>> Settings().replace(kafka={"bootstrap": "127.0.0.1:1"}).kafka.bootstrap
        '127.0.0.1:1'
        """
        raw = msgspec.to_builtins(self)
        for section, values in sections.items():
            raw.setdefault(section, {}).update(values)
        return _convert(raw, strict=True)


_SECTIONS: dict[str, type[_Section]] = {
    f.name: f.type for f in msgspec.structs.fields(Settings)
}


def _convert(raw: Mapping[str, Any], *, strict: bool) -> Settings:
    try:
        settings = msgspec.convert(raw, Settings, strict=strict)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid settings: {exc}") from None
    _check_ranges(settings)
    return settings


def _check_ranges(s: Settings) -> None:
    positive = {
        "kafka.events_partitions": s.kafka.events_partitions,
        "events.max_bytes": s.events.max_bytes,
        "events.max_slate": s.events.max_slate,
        "events.max_clock_skew_s": s.events.max_clock_skew_s,
        "features.dim": s.features.dim,
        "features.profile_capacity": s.features.profile_capacity,
        "bandit.lam": s.bandit.lam,
        "bandit.slate_size": s.bandit.slate_size,
        "bandit.max_items": s.bandit.max_items,
        "worker.checkpoint_every_events": s.worker.checkpoint_every_events,
        "worker.poll_max_records": s.worker.poll_max_records,
        "worker.fetch_max_wait_ms": s.worker.fetch_max_wait_ms,
        "worker.dlq_max_value_bytes": s.worker.dlq_max_value_bytes,
        "policy.publish_every_updates": s.policy.publish_every_updates,
        "fairness.window": s.fairness.window,
        "finetune.steps": s.finetune.steps,
        "finetune.batch_size": s.finetune.batch_size,
        "finetune.lr": s.finetune.lr,
        "finetune.buffer_capacity": s.finetune.buffer_capacity,
        "finetune.min_rows": s.finetune.min_rows,
        "finetune.max_seconds": s.finetune.max_seconds,
        "finetune.validation_rows": s.finetune.validation_rows,
        "serve.max_candidates": s.serve.max_candidates,
        "serve.max_body_bytes": s.serve.max_body_bytes,
        "serve.body_timeout_s": s.serve.body_timeout_s,
        "serve.header_timeout_s": s.serve.header_timeout_s,
        "serve.log_queue_size": s.serve.log_queue_size,
        "serve.keep_versions": s.serve.keep_versions,
        "serve.impression_discount_ttl_s": s.serve.impression_discount_ttl_s,
        "serve.impression_discount_items": s.serve.impression_discount_items,
        "serve.impression_discount_users": s.serve.impression_discount_users,
        "serve.produce_failures_unready": s.serve.produce_failures_unready,
        "privacy.events_retention_s": s.privacy.events_retention_s,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be > 0, got {value}")
    unit = {"bandit.gamma": s.bandit.gamma, "features.profile_decay": s.features.profile_decay}
    for key, value in unit.items():
        if not 0.0 < value <= 1.0:
            raise ConfigError(f"{key} must be in (0, 1], got {value}")
    if not s.serve.impression_discount >= 0:
        raise ConfigError("serve.impression_discount must be >= 0, got "
                          f"{s.serve.impression_discount}")
    if not 0.0 <= s.bandit.epsilon <= 1.0:
        raise ConfigError(f"bandit.epsilon must be in [0, 1], got {s.bandit.epsilon}")
    if s.fairness.exposure_strength < 0:
        raise ConfigError("fairness.exposure_strength must be >= 0, "
                          f"got {s.fairness.exposure_strength}")
    if not 0.0 <= s.finetune.duty_cycle <= 1.0:
        raise ConfigError(f"finetune.duty_cycle must be in [0, 1], got {s.finetune.duty_cycle}")
    if not 0.0 < s.finetune.drift_delta < 1.0:
        raise ConfigError(f"finetune.drift_delta must be in (0, 1), got {s.finetune.drift_delta}")
    if not 1 <= s.serve.max_k <= MAX_K:
        raise ConfigError(f"serve.max_k must be in 1..{MAX_K}, got {s.serve.max_k}")
    if not 0 <= s.serve.port <= 65535:
        raise ConfigError(f"serve.port must be in 0..65535, got {s.serve.port}")
    if not s.worker.dlq_max_value_bytes + 64 * 1024 <= s.worker.dlq_max_request_bytes:
        raise ConfigError("worker.dlq_max_value_bytes must leave 64 KiB of "
                          f"worker.dlq_max_request_bytes ({s.worker.dlq_max_request_bytes}) "
                          f"for key and headers, got {s.worker.dlq_max_value_bytes}")
    if s.bandit.algorithm.startswith("hybrid_"):
        need = _hybrid_bundle_bytes(s.bandit.max_items, s.bandit.item_context, s.features.dim)
        if need > s.policy.max_bundle_bytes:
            raise ConfigError(
                f"bandit.max_items={s.bandit.max_items} needs bundles of up to {need:,} bytes, "
                f"over policy.max_bundle_bytes={s.policy.max_bundle_bytes:,}")
    if s.serve.produce_timeout_ms < 1000:
        raise ConfigError(f"serve.produce_timeout_ms must be >= 1000, "
                          f"got {s.serve.produce_timeout_ms}")
    if s.worker.dlq_retries < 0:
        raise ConfigError(f"worker.dlq_retries must be >= 0, got {s.worker.dlq_retries}")
    if not s.privacy.pseudonym_key:
        raise ConfigError("privacy.pseudonym_key must not be empty")
    if s.events.attribution_window_s < 0:
        raise ConfigError("events.attribution_window_s must be >= 0")
    from stream.settings_ranges import check_more_ranges  # imports this module

    check_more_ranges(s)
    _check_stats(s)
    _check_experiment(s)


def _check_experiment(s: Settings) -> None:
    e = s.experiment
    if not 0 < e.error_rate < 1:
        raise ConfigError(f"experiment.error_rate must be in (0, 1), got {e.error_rate}")
    if not (e.mixture_sd > 0 and e.results_every_s > 0 and e.min_impressions >= 0
            and e.min_users >= 2):
        raise ConfigError("experiment.mixture_sd and experiment.results_every_s must be > 0, "
                          "experiment.min_impressions >= 0, experiment.min_users >= 2")
    if not e.name:
        if e.arms:
            raise ConfigError("experiment.arms given without experiment.name")
        return
    from stream.experiments import InvalidExperiment
    from stream.experiments.config import experiment_from_settings

    try:
        experiment_from_settings(e)
    except InvalidExperiment as exc:
        raise ConfigError(f"experiment.arms: {exc.detail}" if "arm" in exc.reason
                          or "shares" in exc.reason else f"experiment: {exc.detail}") from None


def _check_stats(s: Settings) -> None:
    """What the statistics exchange needs: additive statistics in one feature space."""
    if not s.stats.exchange:
        if s.features.profile_store in ("rocksdb", "sqlite"):
            raise ConfigError(f"features.profile_store = {s.features.profile_store!r} needs "
                              "stats.exchange = true (without it profiles are checkpointed "
                              "whole, from memory)")
        return
    if not (s.stats.emit_every_s > 0 and s.stats.max_delta_bytes > 0):
        raise ConfigError("stats.emit_every_s and stats.max_delta_bytes must be > 0")
    if s.finetune.enabled and s.finetune.buffer_capacity < s.kafka.events_partitions:
        # one fine-tune for the group: each partition keeps buffer_capacity / partitions
        # sampled rows (docs/scaling.md)
        raise ConfigError(f"finetune.buffer_capacity must be >= kafka.events_partitions "
                          f"({s.kafka.events_partitions}) with stats.exchange, got "
                          f"{s.finetune.buffer_capacity}")
    if s.bandit.algorithm not in ("hybrid_linucb", "hybrid_ts", "linucb", "ts"):
        raise ConfigError(f"stats.exchange needs a linear or hybrid bandit.algorithm, "
                          f"got {s.bandit.algorithm!r}")
    if s.bandit.gamma != 1.0:
        raise ConfigError(f"stats.exchange needs bandit.gamma = 1 (forgetting is not "
                          f"additive), got {s.bandit.gamma}")


def _hybrid_bundle_bytes(max_items: int, item_context: str, dim: int) -> int:
    """Upper bound of a hybrid policy's published bundle: per item θ_a and the packed
    factor of its covariance (float64) plus a quoted id of up to 64 bytes; the shared
    β and L⁻¹; 256 KiB for the adapter and framing."""
    k = 1 if item_context == "bias" else 10  # attribute one-hots and the bias
    per_item = 8 * (k + k * (k + 1) // 2) + 70
    return max_items * per_item + 8 * (dim * dim + dim) + 256 * 1024


#: Settings whose environment value is JSON (a list of tables has no plain-text form).
_JSON_KEYS = frozenset({("experiment", "arms")})


def _env_value(section: str, key: str, name: str, value: str) -> Any:
    if (section, key) not in _JSON_KEYS:
        return value
    import json

    try:
        return json.loads(value)
    except ValueError as exc:
        raise ConfigError(f"{name}={value}: {section}.{key} must be JSON "
                          f"(e.g. [{{\"name\": \"control\", \"share\": 1.0}}]): {exc}") from None


def load_settings(path: str | os.PathLike[str] | None = None,
                  env: Mapping[str, str] | None = None) -> Settings:
    """Read settings from ``path`` (TOML, optional), then apply ``FAIRSTREAM_*`` overrides.

    ``env`` defaults to ``os.environ``. Raises :class:`ConfigError` naming the
    offending key for unknown keys, wrong types and out-of-range values.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"settings file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"settings file {path} is not valid TOML: {exc}") from None
    env = os.environ if env is None else env
    overrides: dict[str, dict[str, str]] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        section, sep, key = name[len(ENV_PREFIX):].lower().partition("__")
        if not sep or section not in _SECTIONS:
            raise ConfigError(
                f"unknown setting {section}.{key} (from {name})" if sep
                else f"environment variable {name} is not FAIRSTREAM_<SECTION>__<KEY>")
        if key not in _SECTIONS[section].__struct_fields__:
            raise ConfigError(f"unknown setting {section}.{key} (from {name})")
        overrides.setdefault(section, {})[key] = _env_value(section, key, name, value)
    try:
        file_settings = _convert(raw, strict=True)
    except ConfigError as exc:
        from stream.settings_ranges import name_the_source

        raise ConfigError(name_the_source(str(exc), {}, path)) from None
    if not overrides:
        return file_settings
    merged = msgspec.to_builtins(file_settings)
    for section, values in overrides.items():
        merged[section].update(values)
    # Environment values are strings: let msgspec coerce "8" -> 8, "true" -> True.
    try:
        return _convert(merged, strict=False)
    except ConfigError as exc:  # name the variable the user set, not the key it sets
        from stream.settings_ranges import name_the_source

        raise ConfigError(name_the_source(str(exc), env)) from None


def settings_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a process of ours that should run on ``settings``: ``base``
    (default ``os.environ``) without its ``FAIRSTREAM_*`` variables, plus one for every
    value that differs from the defaults. :func:`load_settings` reads it back.

    >>> s = Settings().replace(kafka={"bootstrap": "127.0.0.1:1"}, finetune={"enabled": False})
    >>> env = settings_env(s, base={"PATH": "/bin", "FAIRSTREAM_KAFKA__GROUP_ID": "x"})
    >>> for name in sorted(env):
    ...     print(name, env[name])
    FAIRSTREAM_FINETUNE__ENABLED false
    FAIRSTREAM_KAFKA__BOOTSTRAP 127.0.0.1:1
    PATH /bin
    >>> load_settings(env=env) == s
    True
    """
    import json

    base = os.environ if base is None else base
    env = {k: v for k, v in base.items() if not k.startswith(ENV_PREFIX)}
    mine, default = msgspec.to_builtins(settings), msgspec.to_builtins(Settings())
    for section, values in mine.items():
        for key, value in values.items():
            if value != default[section][key]:
                env[f"{ENV_PREFIX}{section.upper()}__{key.upper()}"] = (
                    str(value).lower() if isinstance(value, bool)
                    else json.dumps(value) if isinstance(value, list | dict) else str(value))
    return env
