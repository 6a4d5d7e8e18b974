"""The learning worker's loop: fairstream.events → validated events → reward join → bandit
updates → published policies.

One worker is one member of the consumer group on ``fairstream.events``. The loop is
short and delegates each job to a room of its own:

* :class:`~stream.kafka.fetch.FetchProcess` — group membership, fetches, record
  parsing and validation, in a child process on the other core: the worker learns
  from one poll while the child parses the next;
* :class:`~stream.kafka.catalog_feed.CatalogFeed` — ``fairstream.items`` into the
  catalog (new items are embedded as they arrive);
* :class:`~stream.core.state.LearningState` — catalog check, dedup, reward join,
  batched policy updates; it keeps its own offsets and version counter;
* :class:`~stream.worker.deadletter.DeadLetters` — invalid records, byte for byte,
  to the dead-letter topic with their reason;
* :class:`~stream.worker.publisher.Publisher` — signed policy bundles and fairness
  reports;
* :class:`~stream.worker.checkpointer.Checkpointer` — flush, write state + offsets
  atomically, commit; and the restore on start;
* :class:`~stream.worker.finetune.FineTuneControl` — background fine-tunes and the
  NeuralLinear swap;
* :class:`~stream.worker.experiments.ExperimentResultsRoom` — per-arm results of the
  online experiment, its guardrails and the stop of a losing arm;
* :class:`~stream.worker.serving_profiles.ServingProfiles` — each changed user's
  profile, coalesced, to the compacted topic servers read;
* :mod:`stream.worker.process` — GC and BLAS tuning when the worker owns its process.

On (re)start the worker resumes from its checkpoint's offsets, so a crash loses no
event and counts none twice. A rebalance checkpoints before partitions are given up.
:func:`stream.worker.runner.run_worker` is the process entry point (SIGTERM drains,
checkpoints and exits 0); :class:`stream.worker.runner.WorkerThread` runs one in a
thread.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field

from kafka import KafkaProducer
from prometheus_client import start_http_server

from learners import Encoder
from learners.features import AGE_BUCKETS, GENDERS
from stream.core.catalog import Catalog
from stream.core.join import Pending
from stream.core.state import Learned, LearningState
from stream.events import Shown, check_catalog
from stream.exceptions import InvalidEvent
from stream.kafka.catalog_feed import CatalogFeed
from stream.kafka.fetch import FetchProcess, describe_out_of_range, out_of_range_error
from stream.kafka.limits import check_dlq_limits
from stream.kafka.topics import ensure_topics
from stream.kafka.wire import (
    Ack,
    Assigned,
    Chunk,
    Commit,
    OutOfRange,
    Records,
    Revoked,
    Seek,
)
from stream.metrics import Metrics
from stream.settings import Settings
from stream.worker.checkpointer import Checkpointer
from stream.worker.deadletter import DeadLetters
from stream.worker.erasure import Forgetting
from stream.worker.experiments import ExperimentResultsRoom
from stream.worker.finetune import FineTuneControl
from stream.worker.outcomes import Outcomes
from stream.worker.process import tune_process
from stream.worker.progress import ProgressLine
from stream.worker.publisher import Publisher
from stream.worker.serving_profiles import ServingProfiles
from stream.worker.stats_exchange import StatsExchange

log = logging.getLogger(__name__)

_KINDS = ("impression", "click", "purchase")


@dataclass
class WorkerReport:
    """What a worker has handled so far (the CLI prints it as JSON at exit)."""

    events: int = 0
    rejected: int = 0
    duplicates: int = 0
    rows_learned: int = 0
    elapsed_s: float = 0.0
    by_type: dict[str, int] = field(default_factory=dict)


class Worker:
    """A long-running learning worker (also run in a thread by the demo, the bench and
    tests: :class:`stream.worker.runner.WorkerThread`)."""

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
        self._partitions_total = 0  # of the events topic, as the last assignment said
        self._partial = False  # see _check_whole
        self._positions: dict[int, int] = {}
        self._highwater: dict[int, int] = {}
        self.catalog_feed: CatalogFeed | None = None
        self.dead_letters: DeadLetters | None = None
        self.publisher: Publisher | None = None
        self.exchange: StatsExchange | None = None  # with stats.exchange (docs/scaling.md)
        self.finetune = FineTuneControl(settings, self.metrics)
        self.forgetting = Forgetting(settings)
        self.outcomes = Outcomes(self.metrics)  # reward and CTR by source and policy version
        self.experiments = ExperimentResultsRoom(settings, self.metrics)  # online experiments
        self.checkpointer = Checkpointer(settings, self.metrics, parts=[self.experiments])
        self.serving = ServingProfiles(settings, self.metrics)  # what servers read
        self.progress = ProgressLine(settings.worker.log_every_s)
        self._metrics_server = None

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
        ensure_topics(self.settings)
        check_dlq_limits(self.settings)  # before any record could need a dead letter
        started = time.monotonic()
        self._open_clients()
        self._load_catalog(stop)
        if stop.is_set():
            self.close()
            return self.report
        self.state = self.checkpointer.restore(
            self.catalog, fmap=self.exchange.adopted_feature_map() if self.exchange else None)
        if self.exchange is not None:
            self.exchange.bind(self.state, self.lock)
        forgotten = self.forgetting.catch_up(self.state)
        dropped = self.experiments.forget(self.forgetting.erasures.erased)
        if forgotten:
            self.serving.forgotten(forgotten.users, self.forgetting.erasures)
        if forgotten or dropped:
            self.checkpoint()  # an older checkpoint held erased users: replace it now
        self.finetune.warm_up(self.state)
        if self.own_process:
            tune_process()
        self.publish()  # announce the policy it starts from: servers can answer at once
        self.fetch = FetchProcess(self.settings)
        self.fetch.start()  # it joins the group; assignments come back through step()
        self.ready.set()
        try:
            self._loop(stop, idle_exit_s)
            if flush_on_exit:
                with self.lock:
                    self.learn(self.state.close_open(
                        self._assigned if self.exchange is not None else None))
            if self.publisher.pending:
                self.publish()
            if self.experiments.results is not None:
                self.experiments.tick()  # the last results, for the report
            self.checkpoint()
        finally:
            self.report.elapsed_s = time.monotonic() - started
            self.finetune.stop()
            self.close()
        return self.report

    def _loop(self, stop: threading.Event, idle_exit_s: float | None) -> None:
        idle_since = time.monotonic()
        while not stop.is_set():
            n = self.step()
            if self.exchange is not None:
                self._exchange_step()
            if self.exchange is not None and self.state.coordinated:
                self._coordinated_finetune()
            elif self.finetune.step(self.state, self.lock, self.report.rows_learned):
                self.publish()
            now = time.monotonic()
            if n:
                idle_since = now
            elif idle_exit_s is not None and self._caught_up() \
                    and now - idle_since >= idle_exit_s:
                break
            if self.publisher.due(now):
                self.publish()
            if self.serving.due(now):
                self.serving.flush(self.state, self.lock)
            if self.checkpointer.due(now):
                self.checkpoint()
            if self.experiments.due(now):
                self.experiments.tick(now)
            self.metrics.checkpoint_age.set(self.checkpointer.age(now))
            if self.progress.due():
                self._log_progress()

    def close(self) -> None:
        if self.fetch is not None:
            self.fetch.close()  # the child leaves the group
            self.fetch = None
        for room in (self.catalog_feed, self.dead_letters, self.publisher, self.exchange):
            if room is not None:
                room.close()
        self.forgetting.close()
        self.experiments.close()
        self.serving.close()
        self.catalog_feed = self.dead_letters = self.publisher = self.exchange = None
        if self.state is not None:
            self.state.profiles.close()  # a disk store: flushed, its lock released
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server = None

    def _open_clients(self) -> None:
        s = self.settings
        self.catalog_feed = CatalogFeed(s, self.catalog, self.encoder).open()
        self.forgetting.open()
        self.experiments.open()
        self.serving.open()
        k, w = s.kafka, s.worker
        self.dead_letters = DeadLetters(
            KafkaProducer(bootstrap_servers=k.bootstrap, acks="all", linger_ms=20,
                          max_request_size=w.dlq_max_request_bytes,
                          client_id=f"{k.client_id}-dlq"),
            s.topics.dlq, max_value_bytes=w.dlq_max_value_bytes, retries=w.dlq_retries)
        self.publisher = Publisher(s, self.metrics, self.checkpointer.record_published)
        # What a checkpoint covers must be acknowledged before it is written.
        self.checkpointer.acked = [self.dead_letters, self.publisher, self.serving]
        if s.stats.exchange:
            self.exchange = StatsExchange(
                s, self.metrics, source=f"{socket.gethostname()}-{os.getpid()}",
                on_experiment=lambda rows: self.experiments.absorb(
                    rows, self.forgetting.erasures.erased))
            self.checkpointer.acked.append(self.exchange)
            self.experiments.leads = lambda: self.exchange.publishes

    def _load_catalog(self, stop: threading.Event) -> None:
        """Read fairstream.items to its end (waiting for a first item if it is empty)."""
        self.catalog_feed.load(stop)
        self.metrics.catalog_items.set(len(self.catalog))
        self.metrics.declare_groups(
            [f"gender={g}" for g in GENDERS] + [f"age={a}" for a in AGE_BUCKETS],
            sorted(set(self.catalog.popularity)))

    # -- the loop -------------------------------------------------------------------------------

    def step(self) -> int:
        """One message from the fetch process: a poll's records (join, learn) or a
        rebalance. Returns the number of records handled."""
        if self.catalog_feed.poll():
            self.metrics.catalog_items.set(len(self.catalog))
            log.info("catalog grew to %d items", len(self.catalog))
        forgotten = self.forgetting.poll(self.state, self.lock)
        dropped = self.experiments.forget(self.forgetting.erasures.erased) \
            if forgotten.markers else 0
        if forgotten:
            if self.exchange is not None:  # and their changelog records
                self.exchange.forgotten(forgotten.users)
            self.serving.forgotten(forgotten.users, self.forgetting.erasures)
        if forgotten or dropped:
            self.checkpoint()  # the file on disk stops holding the forgotten users now
        self.experiments.poll()
        message = self.fetch.receive(timeout_s=self.settings.worker.poll_timeout_ms / 1000)
        if isinstance(message, Records):
            return self._handle_records(message)
        if isinstance(message, Assigned):
            self._on_assigned(message.partitions, message.of)
        elif isinstance(message, Revoked):
            self._on_revoked(message.partitions)
        elif isinstance(message, OutOfRange):
            self._on_out_of_range(message)
        return 0

    def _on_assigned(self, partitions: list[int], of: int = 0) -> None:
        """Seek newly assigned partitions to the checkpoint's offsets (with the statistics
        exchange: to where their last deltas end, read first)."""
        publisher = self.exchange is not None and self.exchange.assigned(partitions)
        # Restored profiles may hold erased users (the changelog lags, deltas keep them).
        forgotten = self.forgetting.reapply(self.state, self.lock) \
            if self.exchange is not None else None
        offsets = self.state.offsets
        # Without the exchange this worker's state is its own: a partition it never
        # learnt from is read from the log start, not from where another member of the
        # group committed (those records are in that member's model, not in this one).
        earliest = ([p for p in partitions if p not in offsets] if self.exchange is None
                    else [])
        self.fetch.send(Seek({p: offsets[p] for p in partitions if p in offsets}, earliest))
        self._assigned.update(partitions)
        self._partitions_total = of or self._partitions_total
        log.info("assigned %s", partitions)
        self._check_whole()
        if forgotten:
            self.exchange.forgotten(forgotten.users)
            self.serving.forgotten(forgotten.users, self.forgetting.erasures)
            self.checkpoint()  # their changelog records go now
        if publisher:
            self.publish()

    def _on_out_of_range(self, message: OutOfRange) -> None:
        """Checkpoint offsets the broker does not hold (``worker.offset_out_of_range``)."""
        for r in message.ranges:
            self.metrics.offsets_out_of_range.labels(partition=str(r.partition)).inc()
        topic = self.settings.topics.events
        if not message.reset:
            raise out_of_range_error(message, topic)
        log.warning("%s: resuming from the log start (worker.offset_out_of_range = earliest)",
                    describe_out_of_range(message, topic))

    def _on_revoked(self, partitions: list[int]) -> None:
        """Checkpoint before losing partitions: every record fetched before the rebalance
        has been handled (the fetch process's messages arrive in order)."""
        self.checkpoint(commit=False)
        if self.exchange is not None:
            self.exchange.revoked(partitions)
        self.fetch.send(Ack())
        self._assigned.difference_update(partitions)
        self._check_whole()
        for p in partitions:
            self._positions.pop(p, None)
            self._highwater.pop(p, None)
        log.info("revoked %s", partitions)

    def _handle_records(self, message: Records) -> int:
        handled = duplicates = 0
        kinds = dict.fromkeys(_KINDS, 0)  # counted once per poll, not per record
        with self.lock:
            closed: list[Pending] = []
            for chunk in message.chunks:
                observed = self.state.observe_records(chunk.partition, chunk.events,
                                                      chunk.next_offset)
                closed += observed.closed
                self.forgetting.observed(self.state, chunk.events)
                self.serving.observed(self.state, chunk.events)
                if self.exchange is not None:
                    self.exchange.observed(chunk, observed)
                duplicates += observed.duplicates
                for kind, n in observed.kinds.items():
                    kinds[kind] += n
                for i in observed.unknown:
                    self._unknown_item(chunk, i)
                for r in chunk.rejected:
                    self._dead_letter(chunk.partition, r.offset, r.key, r.value,
                                      InvalidEvent(r.reason, r.detail))
                handled += len(chunk.offsets) + len(chunk.rejected)
            if closed:
                self.learn(closed)
            self.outcomes.sync_unjoined(self.state.joiner.unjoined)
        if duplicates:
            self.metrics.events_duplicate.inc(duplicates)
            self.report.duplicates += duplicates
        for kind, n in kinds.items():
            if n:
                self._consumed[kind].inc(n)
                self.report.by_type[kind] = self.report.by_type.get(kind, 0) + n
        self.checkpointer.covered(handled)
        self.report.events += handled
        self._positions.update(message.positions)
        self._highwater.update(message.highwater)
        self._update_lag()
        return handled

    def _unknown_item(self, chunk: Chunk, i: int) -> None:
        event = chunk.events[i]
        try:
            check_catalog(event.items if type(event) is Shown else (event.item_id,),
                          self.catalog.index)
        except InvalidEvent as exc:
            self._dead_letter(chunk.partition, chunk.offsets[i], chunk.keys[i],
                              chunk.values[i], exc)

    def _dead_letter(self, partition: int, offset: int, key: bytes | None, value: bytes | None,
                     exc: InvalidEvent) -> None:
        self.metrics.events_rejected.labels(reason=exc.reason).inc()
        self.report.rejected += 1
        self.dead_letters.send(partition, offset, key, value, exc.reason, exc.detail,
                               source_topic=self.settings.topics.events)
        log.debug("dead-lettered %s/%d/%d: %s", self.settings.topics.events, partition,
                  offset, exc)

    def learn(self, closed: list[Pending]) -> Learned:
        """Update the policy from closed impressions, and count what they taught."""
        t0 = time.perf_counter()
        closed = self.forgetting.screen(closed)
        learned = self.state.learn(closed)
        self.serving.learned(closed)
        if self.exchange is not None:
            self.exchange.learned(closed, learned)
        self.metrics.bandit_update_seconds.observe(time.perf_counter() - t0)
        self.metrics.bandit_updates.inc(learned.rows)
        self.report.rows_learned += learned.rows
        self.publisher.learned(learned.rows)
        self.finetune.learned(learned)
        for group, exposure in learned.exposure_by_item_group.items():
            self.metrics.exposure.labels(item_group=group).inc(exposure)
        self.outcomes.count(closed)  # reward by source: per version, and per user group
        counted = self.experiments.observed(closed, self.catalog)  # reward, exposure per arm
        if self.exchange is not None and counted:
            self.exchange.counted(counted)
        return learned

    def _log_progress(self) -> None:
        lag = sum(max(0, high - self._positions.get(p, high))
                  for p, high in self._highwater.items() if p in self._assigned)
        log.info(self.progress.due_line(self.report.events, self.report.rows_learned, lag,
                                        self.state.version, self.outcomes.take_window()))

    def _owns_part(self) -> bool:
        """Without the statistics exchange, whether this worker learns from only some of
        the events partitions: another member of its group has the rest."""
        return (self.exchange is None and bool(self._assigned)
                and len(self._assigned) < self._partitions_total)

    def _check_whole(self) -> None:
        partial = self._owns_part()
        if partial and not self._partial:
            log.error("this worker learns from events partitions %s of %d: another worker of "
                      "group %s has the rest, so its policy is a part of the model and is not "
                      "published; run one worker, or set stats.exchange = true to run several "
                      "(docs/scaling.md)", sorted(self._assigned), self._partitions_total,
                      self.settings.kafka.group_id)
        self._partial = partial
        self.metrics.partial_model.set(int(partial))

    def publish(self) -> int:
        """Publish the current policy as a signed bundle, and the window's fairness figures;
        returns its version. With the statistics exchange only the owner of partition 0
        publishes; the others return the version they stand at. Without it, a worker that
        owns only some partitions withholds its policy: servers would take whichever part
        carried the higher version (counted, logged once, ``fairstream_worker_partial_model``)."""
        if self.exchange is not None and not self.exchange.publishes:
            return self.state.version
        if self._owns_part():
            self.publisher.withhold()
            self.metrics.publishes_withheld.inc()
            return self.state.version
        version = self.publisher.publish(self.state, self.lock)
        self.outcomes.declare(version)  # its outcome series start at 0, before its traffic
        return version

    def _exchange_step(self) -> None:
        """Fold other workers' deltas (they count towards the next publish), and send this
        worker's when due."""
        rows = self.exchange.poll()
        if rows:
            self.publisher.learned(rows)
        if self.exchange.due(time.monotonic()):
            self.exchange.emit()
        if self.exchange.take_switched():  # the first bundle of the new feature space
            self.publish()

    def _coordinated_finetune(self) -> None:
        """One fine-tune for the whole group (docs/scaling.md): the publisher trains on
        every partition's sample and announces an adopted run as the next epoch; every
        worker then re-bases, and switches once all partitions have."""
        result = self.finetune.step_shared(self.state, self.lock,
                                           trainer=self.exchange.publishes)
        if result is not None:
            self.exchange.announce(result.fmap)
        if self.exchange.take_switched():
            self.publish()

    def checkpoint(self, commit: bool = True) -> None:
        """Flush what must be acked, write state + offsets atomically, then (optionally)
        commit those offsets (:class:`~stream.worker.checkpointer.Checkpointer`). The users
        whose profiles moved are written first: on a revocation, while it holds them."""
        if self.state is not None:
            self.serving.flush(self.state, self.lock)
        self.checkpointer.checkpoint(self.state, self.lock,
                                     commit=self._commit if commit else None)

    def _commit(self, offsets: dict[int, int]) -> None:
        """Have the fetch process commit the checkpoint's offsets of the partitions it
        holds, between its polls."""
        mine = {p: o for p, o in offsets.items() if p in self._assigned}
        if mine and self.fetch is not None:
            self.fetch.send(Commit(mine))

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
