"""The learning worker: fairstream.events → validated events → reward join → bandit updates.

One worker is one member of the consumer group on ``fairstream.events``. It
materialises the catalog from ``fairstream.items`` (embedding new items as they
arrive), decodes and validates every message (the invalid ones go to the
dead-letter topic with their reason), joins rewards to impressions, updates the
policy in batches, and checkpoints state together with the offsets it covers.
On (re)start it resumes from its checkpoint's offsets, so a crash loses no
event and counts none twice. SIGTERM drains, checkpoints and exits 0.

The group membership, the fetches, kafka-python's record parsing and event
validation run in a child process (:mod:`stream.fetch`), on the other core:
the worker learns from one poll while the child parses the next.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client import start_http_server
from threadpoolctl import threadpool_limits

from learners import Encoder, FineTuneError, FineTuner
from learners.features import AGE_BUCKETS, GENDERS
from stream.bundle import dump_bundle
from stream.checkpoint import CheckpointError, read_checkpoint, write_atomic, write_checkpoint
from stream.deadletter import DeadLetters
from stream.events import check_catalog
from stream.exceptions import InvalidEvent
from stream.fetch import (
    Ack,
    Assigned,
    Chunk,
    Commit,
    FetchProcess,
    Records,
    Revoked,
    Seek,
    Shown,
)
from stream.join import Pending
from stream.metrics import Metrics
from stream.settings import Settings
from stream.state import Catalog, Learned, LearningState
from stream.topics import ensure_topics

log = logging.getLogger(__name__)

_KINDS = ("impression", "click", "purchase")


@dataclass
class WorkerReport:
    events: int = 0
    rejected: int = 0
    duplicates: int = 0
    rows_learned: int = 0
    elapsed_s: float = 0.0
    by_type: dict[str, int] = field(default_factory=dict)


class Worker:
    """A long-running learning worker (also usable in-process by the demo and tests)."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None,
                 encoder: Encoder | None = None, own_process: bool = False) -> None:
        """``own_process``: the worker is what this process is for (``fairstream worker``),
        so it may tune the process's garbage collector and BLAS (:func:`tune_process`)."""
        self.settings = settings
        self.own_process = own_process
        self.metrics = metrics or Metrics()
        self.encoder = encoder or Encoder(cache_dir=settings.embedding_cache_dir,
                                          device=settings.model.device,
                                          batch_size=settings.model.batch_size)
        self.catalog = Catalog(self.encoder.dim)
        self.state: LearningState | None = None
        self.lock = threading.Lock()  # guards `state` against readers in other threads
        self.report = WorkerReport()
        self._consumed = {kind: self.metrics.events_consumed.labels(type=kind)
                          for kind in _KINDS}
        self.ready = threading.Event()
        self.fetch: FetchProcess | None = None
        # The fetch process's view after the last poll the worker handled, per partition.
        self._assigned: set[int] = set()
        self._positions: dict[int, int] = {}
        self._highwater: dict[int, int] = {}
        self._items: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self._dlq: DeadLetters | None = None
        self._metrics_server = None
        self._last_checkpoint = time.monotonic()
        self._since_checkpoint = 0
        self._last_publish = time.monotonic()
        self._since_publish = 0
        ft = settings.finetune
        self.tuner = FineTuner(
            steps=ft.steps, batch_size=ft.batch_size, lr=ft.lr, device=settings.model.device,
            every_events=ft.every_updates or None, every_seconds=ft.every_s or None,
            min_rows=ft.min_rows, seed=settings.features.seed,
            duty_cycle=ft.duty_cycle or None,
        ) if ft.enabled else None
        self._drift_seen: dict[str, int] = {}

    # -- lifecycle ------------------------------------------------------------------------------

    def serve_metrics(self) -> int:
        """Expose /metrics on ``worker.metrics_port`` (0 picks a free port); returns the port."""
        w = self.settings.worker
        server, _thread = start_http_server(w.metrics_port, addr=w.metrics_host,
                                            registry=self.metrics.registry)
        self._metrics_server = server
        return server.server_address[1]

    def run(self, stop: threading.Event | None = None, idle_exit_s: float | None = None,
            flush_on_exit: bool = False) -> WorkerReport:
        """Consume until ``stop`` is set (or, with ``idle_exit_s``, until caught up and idle).

        ``flush_on_exit`` closes every still-open impression before the final
        checkpoint (for bounded runs such as the demo; a long-running worker
        keeps them open for the next start).
        """
        stop = stop or threading.Event()
        s = self.settings
        ensure_topics(s)
        started = time.monotonic()
        self._open_clients()
        self._load_catalog(stop)
        if stop.is_set():
            self.close()
            return self.report
        self._restore()
        if self.tuner is not None:
            log.info("fine-tune path warmed up in %.1fs", self.tuner.warm_up(self.state.fmap))
        if self.own_process:
            tune_process()
        self.publish()  # announce the policy it starts from: servers can answer at once
        self.fetch = FetchProcess(s)
        self.fetch.start()  # it joins the group; assignments come back through step()
        self.ready.set()
        idle_since = time.monotonic()
        try:
            while not stop.is_set():
                n = self.step()
                self._fine_tune()
                now = time.monotonic()
                if n:
                    idle_since = now
                elif idle_exit_s is not None and self._caught_up() \
                        and now - idle_since >= idle_exit_s:
                    break
                if self._since_publish and (
                        self._since_publish >= s.policy.publish_every_updates
                        or now - self._last_publish >= s.policy.publish_every_s):
                    self.publish()
                if (self._since_checkpoint >= s.worker.checkpoint_every_events
                        or now - self._last_checkpoint >= s.worker.checkpoint_every_s):
                    self.checkpoint()
                self.metrics.checkpoint_age.set(now - self._last_checkpoint)
            if flush_on_exit:
                with self.lock:
                    self._learn(self.state.joiner.flush())
            if self._since_publish:
                self.publish()
            self.checkpoint()
        finally:
            self.report.elapsed_s = time.monotonic() - started
            if self.tuner is not None:
                # Stop and join a running fine-tune: a torch thread still running when the
                # interpreter exits aborts the process.
                self.tuner.cancel()
                try:
                    self.tuner.wait(timeout=60)
                except FineTuneError as exc:
                    log.warning("fine-tune at shutdown: %s", exc)
            self.close()
        return self.report

    def close(self) -> None:
        if self.fetch is not None:
            self.fetch.close()  # the child leaves the group
            self.fetch = None
        if self._items is not None:
            self._items.close()
        if self._producer is not None:
            self._producer.flush()
            self._producer.close()
        self._items = self._producer = None
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server = None

    def _open_clients(self) -> None:
        k = self.settings.kafka
        self._items = KafkaConsumer(bootstrap_servers=k.bootstrap, enable_auto_commit=False,
                                    client_id=f"{k.client_id}-catalog")
        self._items.assign([TopicPartition(self.settings.topics.items, 0)])
        self._items.seek_to_beginning()
        w = self.settings.worker
        self._producer = KafkaProducer(bootstrap_servers=k.bootstrap, acks="all", linger_ms=20,
                                       max_request_size=w.dlq_max_request_bytes,
                                       client_id=f"{k.client_id}-dlq")
        self._dlq = DeadLetters(self._producer, self.settings.topics.dlq,
                                max_value_bytes=w.dlq_max_value_bytes, retries=w.dlq_retries)

    def _restore(self) -> None:
        ck = read_checkpoint(self.settings.worker.checkpoint_path)
        if ck is None:
            self.state = LearningState.fresh(self.settings, self.catalog)
            log.info("no checkpoint: fresh %r", self.state.policy)
        else:
            self.state = LearningState.from_checkpoint(self.settings, self.catalog, ck)
            log.info("resumed from checkpoint at offsets %s", ck.offsets)
        # Versions published after the last checkpoint must not be reused: servers only
        # swap to a newer number, so a reused one would be ignored.
        self.state.version = max(self.state.version, self._published_version())
        self.metrics.policy_version.set(self.state.version)

    @property
    def _version_path(self) -> Path:
        path = Path(self.settings.worker.checkpoint_path)
        return path.with_name(path.name + ".published")

    def _published_version(self) -> int:
        try:
            return int(self._version_path.read_text())
        except FileNotFoundError:
            return 0
        except ValueError as exc:
            raise CheckpointError(f"{self._version_path} does not hold a version") from exc

    # -- catalog --------------------------------------------------------------------------------

    def _load_catalog(self, stop: threading.Event) -> None:
        """Read fairstream.items to its end (waiting for a first item if it is empty)."""
        tp = TopicPartition(self.settings.topics.items, 0)
        warned = False
        while not stop.is_set():
            self._poll_catalog(timeout_ms=500)
            high = self._items.highwater(tp)
            if high is not None and self._items.position(tp) >= high and len(self.catalog):
                break
            if not warned and high is None and not len(self.catalog):
                log.info("waiting for items on %s", tp.topic)
                warned = True
        log.info("catalog: %d items", len(self.catalog))
        self.metrics.declare_groups(
            [f"gender={g}" for g in GENDERS] + [f"age={a}" for a in AGE_BUCKETS],
            sorted({g.get("popularity", "unknown") for g in self.catalog.groups}))

    def _poll_catalog(self, timeout_ms: int = 0) -> int:
        added = self.catalog.add_records(
            self._items.poll(timeout_ms=timeout_ms, max_records=5000), self.encoder)
        if added:
            self.metrics.catalog_items.set(len(self.catalog))
        return added

    # -- the loop -------------------------------------------------------------------------------

    def step(self) -> int:
        """One message from the fetch process: a poll's records (join, learn) or a
        rebalance. Returns the number of records handled."""
        if self._poll_catalog():
            log.info("catalog grew to %d items", len(self.catalog))
        message = self.fetch.receive(timeout_s=self.settings.worker.poll_timeout_ms / 1000)
        if isinstance(message, Records):
            return self._handle_records(message)
        if isinstance(message, Assigned):
            self._on_assigned(message.partitions)
        elif isinstance(message, Revoked):
            self._on_revoked(message.partitions)
        return 0

    def _on_assigned(self, partitions: list[int]) -> None:
        """Seek newly assigned partitions to the checkpoint's offsets."""
        offsets = self.state.offsets
        self.fetch.send(Seek({p: offsets[p] for p in partitions if p in offsets}))
        self._assigned.update(partitions)
        log.info("assigned %s", partitions)

    def _on_revoked(self, partitions: list[int]) -> None:
        """Checkpoint before losing partitions: every record fetched before the rebalance
        has been handled (the fetch process's messages arrive in order)."""
        self.checkpoint(commit=False)
        self.fetch.send(Ack())
        self._assigned.difference_update(partitions)
        for p in partitions:
            self._positions.pop(p, None)
            self._highwater.pop(p, None)
        log.info("revoked %s", partitions)

    def _handle_records(self, message: Records) -> int:
        handled = 0
        kinds = dict.fromkeys(_KINDS, 0)  # counted once per poll, not per record
        with self.lock:
            closed: list[Pending] = []
            for chunk in message.chunks:
                self._handle_chunk(chunk, closed, kinds)
                for r in chunk.rejected:
                    self._dead_letter(chunk.partition, r.offset, r.key, r.value,
                                      InvalidEvent(r.reason, r.detail))
                handled += len(chunk.offsets) + len(chunk.rejected)
                self.state.offsets[chunk.partition] = chunk.next_offset
            if closed:
                self._learn(closed)
        for kind, n in kinds.items():
            if n:
                self._consumed[kind].inc(n)
                self.report.by_type[kind] = self.report.by_type.get(kind, 0) + n
        self._since_checkpoint += handled
        self.report.events += handled
        self._positions.update(message.positions)
        self._highwater.update(message.highwater)
        self._update_lag()
        return handled

    def _handle_chunk(self, chunk: Chunk, closed: list[Pending], kinds: dict[str, int]) -> None:
        """One partition's valid events, in order: catalog check, dedup, join; impressions
        whose window closed go to ``closed``.

        The loop runs once per event, so what it calls per event is bound to locals
        first; the rare paths (an unknown item, a duplicate) are calls of their own."""
        p = chunk.partition
        known = self.catalog.index
        state = self.state
        seen = state.seen.check_and_add
        impression, feedback = state.observe_impression, state.observe_feedback
        for i, event in enumerate(chunk.events):
            shown = type(event) is Shown
            if shown:
                items = event.items  # one item, a replay's slate, skips the generator
                known_items = (items[0] in known if len(items) == 1
                               else all(item in known for item in items))
            else:
                known_items = event.item_id in known
            if not known_items:
                self._unknown_item(chunk, i)
            elif seen(event.event_id):
                self._duplicate()
            elif shown:
                kinds["impression"] += 1
                closed += impression(p, event.request_id, event.user_id, event.ts, items,
                                     event.propensities, event.user)
            else:
                kinds[event.kind] += 1
                closed += feedback(p, event.request_id, event.item_id, event.kind, event.ts)

    def _unknown_item(self, chunk: Chunk, i: int) -> None:
        event = chunk.events[i]
        try:
            check_catalog(event.items if type(event) is Shown else (event.item_id,),
                          self.catalog.index)
        except InvalidEvent as exc:
            self._dead_letter(chunk.partition, chunk.offsets[i], chunk.keys[i],
                              chunk.values[i], exc)

    def _duplicate(self) -> None:
        self.metrics.events_duplicate.inc()
        self.report.duplicates += 1

    def _dead_letter(self, partition: int, offset: int, key: bytes | None, value: bytes | None,
                     exc: InvalidEvent) -> None:
        self.metrics.events_rejected.labels(reason=exc.reason).inc()
        self.report.rejected += 1
        self._dlq.send(partition, offset, key, value, exc.reason, exc.detail,
                       source_topic=self.settings.topics.events)
        log.debug("dead-lettered %s/%d: %s", self.settings.topics.events, partition, exc)

    def _learn(self, closed: list[Pending]) -> Learned:
        t0 = time.perf_counter()
        learned = self.state.learn(closed)
        self.metrics.bandit_update_seconds.observe(time.perf_counter() - t0)
        self.metrics.bandit_updates.inc(learned.rows)
        self.report.rows_learned += learned.rows
        self._since_publish += learned.rows
        for group, (total, n) in learned.reward_by_user_group.items():
            self.metrics.reward_sum.labels(user_group=group).inc(total)
            self.metrics.impressions_joined.labels(user_group=group).inc(n)
        for group, exposure in learned.exposure_by_item_group.items():
            self.metrics.exposure.labels(item_group=group).inc(exposure)
        return learned

    def _fine_tune(self) -> None:
        """Start a background fine-tune when due; adopt a finished one (NeuralLinear swap)."""
        if self.tuner is None:
            return
        state = self.state
        for segment, count in state.drift.detections.items():
            new = count - self._drift_seen.get(segment, 0)
            if new:
                self.metrics.drift_detected.labels(segment=str(segment)).inc(new)
                self._drift_seen[segment] = count
        try:
            result = self.tuner.poll()
        except FineTuneError as exc:
            self.metrics.finetune_failures.inc()
            log.error("%s", exc)
            return
        if result is None:
            self.tuner.maybe_start(state.buffer, state.fmap, events_seen=self.report.rows_learned,
                                   drift=state.drift.consume())
            return
        self.metrics.finetune_seconds.observe(result.train_seconds)
        with self.lock:
            swapped = state.swap(result)
        self.metrics.finetunes.labels(outcome="swapped" if swapped else "rejected").inc()
        log.info("fine-tune (%s, %d rows, %d steps, %.1fs): log-loss %.4f -> %.4f; %s",
                 result.trigger, result.rows, result.steps, result.train_seconds,
                 result.loss_before, result.loss_after,
                 f"now in {result.feature_space}" if swapped else "kept the current space")
        if swapped:
            self.metrics.finetune_loss.set(result.loss_after)
            self.publish()

    def publish(self) -> None:
        """Publish the current policy as a signed bundle, and the window's fairness figures."""
        s = self.settings
        with self.lock:
            self.state.version += 1
            bundle = dump_bundle(self.state.policy, self.state.fmap,
                                 key=s.policy.signing_key.encode(), version=self.state.version)
            report = self.state.fairness.window_report()
        # Record the number before sending it, so a crash right after never reuses it.
        write_atomic(self._version_path, str(self.state.version).encode())
        self._producer.send(s.topics.policies, key=s.kafka.group_id.encode(), value=bundle)
        fairness = {"policy_version": self.state.version, "ts": time.time(),
                    "window": asdict(report),
                    "disparity_target": s.fairness.disparity_target}
        self._producer.send(s.topics.fairness, key=s.kafka.group_id.encode(),
                            value=_json(fairness))
        self.metrics.policies_published.inc()
        self.metrics.policy_last_published.set(time.time())
        self.metrics.policy_version.set(self.state.version)
        self.metrics.disparity_target.set(s.fairness.disparity_target)
        if report.disparity == report.disparity:  # NaN until some reward has been seen
            self.metrics.exposure_disparity.set(report.disparity)
        for group, share in report.exposure_share.items():
            self.metrics.exposure_share.labels(item_group=group).set(share)
        for group, rate in report.reward_rate.items():
            self.metrics.reward_rate.labels(user_group=group).set(rate)
        self._last_publish = time.monotonic()
        self._since_publish = 0
        log.info("published policy v%d (%s, %d updates)", self.state.version,
                 self.state.fmap.feature_space, self.state.policy.n_updates)

    def _update_lag(self) -> None:
        for p, high in self._highwater.items():
            if p in self._assigned:
                self.metrics.consumer_lag.labels(partition=str(p)).set(
                    max(0, high - self._positions[p]))

    def _caught_up(self) -> bool:
        if not self._assigned:
            return False
        # A partition no fetch has answered for yet has no high watermark (an empty one
        # answers 0).
        return all(p in self._highwater and self._positions[p] >= self._highwater[p]
                   for p in self._assigned)

    # -- checkpoints ----------------------------------------------------------------------------

    def checkpoint(self, commit: bool = True) -> None:
        """Settle what must be acknowledged first (dead letters, published policies and
        fairness reports), then write state + offsets atomically, then (optionally)
        commit those offsets: a checkpoint never covers a record whose dead letter a
        crash could still lose."""
        t0 = time.perf_counter()
        self._dlq.settle()  # flushes the producer the publisher shares
        with self.lock:
            ck = self.state.to_checkpoint()
            write_checkpoint(self.settings.worker.checkpoint_path, ck)
        self.metrics.checkpoint_seconds.observe(time.perf_counter() - t0)
        self.metrics.checkpoints.inc()
        self._last_checkpoint = time.monotonic()
        self._since_checkpoint = 0
        if commit:
            self._commit(ck.offsets)

    def _commit(self, offsets: dict[int, int]) -> None:
        """Have the fetch process commit the checkpoint's offsets of the partitions it
        holds, between its polls (best effort: the checkpoint is the source of truth;
        commits feed lag tooling)."""
        mine = {p: o for p, o in offsets.items() if p in self._assigned}
        if mine and self.fetch is not None:
            self.fetch.send(Commit(mine))


#: Young-generation threshold of a worker process (the interpreter's default is 700).
GC_YOUNG_THRESHOLD = 50_000


def tune_process() -> None:
    """Tune the interpreter and numpy for a process that is a worker: :func:`tune_gc`
    and :func:`single_threaded_blas`."""
    tune_gc()
    single_threaded_blas()


def tune_gc() -> None:
    """Collect garbage the way a streaming worker allocates it.

    Per record the worker allocates a few short-lived containers (the decoded event,
    its lists, the pending impression); nearly all are freed by reference counting, yet
    every 700 of them trigger a young collection, and the older generations are then
    scanned in proportion to everything the process holds (model, catalog, profiles).
    Freezing what start-up built moves it out of every future collection, and a
    young collection every 50,000 allocations keeps cycles bounded. Measured with
    ``fairstream bench pipeline``, two runs each: 24,049 and 27,909 records/s learnt
    without, 33,252 and 33,837 with.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def single_threaded_blas() -> None:
    """Run numpy's BLAS on the calling thread only.

    A worker's matrix products are small (a poll's rows by 384 or 64 columns), and
    the other core belongs to the fetch process. With OpenBLAS's default of one
    thread per core, its helper thread spun on that core for 0.28 s of each second
    of learning (``fairstream bench pipeline``, per-thread CPU times from /proc),
    taking it from the fetch process. Fine-tunes use torch's own thread pool, which
    this leaves alone.
    """
    threadpool_limits(limits=1, user_api="blas")


def _json(obj: Any) -> bytes:
    """JSON with NaN (an undefined ratio) written as null, as strict JSON requires."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(obj), allow_nan=False).encode()
