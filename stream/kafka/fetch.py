"""The worker's fetch process: Kafka fetches, record parsing and event validation on a core
of their own.

kafka-python parses every fetched record in Python, and that parse costs about as
much as everything the worker learns from the record. In one process the two share
one core (the GIL); here a child process owns the group membership on
``fairstream.events``, parses and validates records, and hands the worker whole polls
while the worker learns from the previous one.

The two talk over a Unix socket pair in the frames of :mod:`stream.kafka.wire`.

After each Seek the child compares the sought offsets with the partition's range on the
broker (log start to high-water mark). A broker that lost its log (Tansu's memory storage
after a restart) answers a fetch beyond its high-water mark with nothing rather than an
error, so without this check the worker would wait there for good, reporting no lag. An
offset out of range goes back to the worker (:class:`~stream.kafka.wire.OutOfRange`),
which stops with :class:`~stream.exceptions.OffsetOutOfRange` or, with
``worker.offset_out_of_range = "earliest"``, the child resumes from the log start.

A rebalance is a round trip: the child's rebalance callback sends Assigned or Revoked
and waits for the answer. Frames arrive in order, so when the worker answers, it has
learnt every record fetched before the rebalance, and a checkpoint written then covers
exactly the offsets it holds. The child ignores SIGINT and SIGTERM (the worker decides
when to stop) and leaves the group when its socket closes, which also happens when the
worker is killed.

Validation here is everything :class:`~stream.events.EventCodec` checks except catalog
membership, which needs the worker's catalog: the worker checks that and dead-letters
what fails. Valid events travel decoded, as the compact
:class:`~stream.events.Shown` and :class:`~stream.events.Feedback` records, beside their
raw bytes, so a dead letter still carries the original message.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from stream.events import EventCodec, Feedback, Shown, compact
from stream.exceptions import FetchError, InvalidEvent, OffsetOutOfRange
from stream.kafka.wire import (
    Ack,
    Assigned,
    Channel,
    ChannelClosed,
    Chunk,
    Commit,
    Failed,
    Message,
    OffsetRange,
    OutOfRange,
    Records,
    Rejected,
    Revoked,
    Seek,
    Start,
)
from stream.settings import Settings

log = logging.getLogger(__name__)


class FetchProcess:
    """The worker's end: starts the child and exchanges messages with it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._proc: subprocess.Popen[bytes] | None = None
        self._channel: Channel | None = None

    def start(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "stream.kafka.fetch", str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        self._channel = Channel(mine)
        level = logging.getLogger("stream").getEffectiveLevel()
        self.send(Start(settings=self.settings, log_level=level))
        log.info("fetch process %d started", self._proc.pid)

    def send(self, message: Message) -> None:
        try:
            self._channel.send(message)
        except ChannelClosed:
            raise self._gone() from None

    def receive(self, timeout_s: float) -> Message | None:
        try:
            message = self._channel.receive(timeout_s)
        except ChannelClosed:
            raise self._gone() from None
        if isinstance(message, Failed):
            raise FetchError(f"fetch process failed: {message.error}")
        return message

    def _gone(self) -> FetchError:
        try:
            code = self._proc.wait(timeout=5) if self._proc is not None else None
        except subprocess.TimeoutExpired:
            return FetchError("fetch process closed its channel but has not exited")
        return FetchError(f"fetch process exited (code {code})")

    def close(self, timeout_s: float = 15.0) -> None:
        """Close the channel (the child commits what it was last sent, leaves the group and
        exits) and reap the child."""
        deadline = time.monotonic() + timeout_s
        if self._channel is not None:
            self._channel.drain_and_close(timeout_s)
            self._channel = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("fetch process %d did not exit in %.0fs; killing it",
                            self._proc.pid, timeout_s)
                self._proc.kill()
                self._proc.wait()
            self._proc = None


def describe_out_of_range(message: OutOfRange, topic: str) -> str:
    """Which partitions' offsets lie outside the broker's range, and the ranges.

    >>> describe_out_of_range(OutOfRange([OffsetRange(1, 120, 0, 7)], False), "t.events")
    "t.events partition 1: checkpoint offset 120 is outside the broker's range 0..7"
    """
    return "; ".join(f"{topic} partition {r.partition}: checkpoint offset {r.offset} is "
                     f"outside the broker's range {r.low}..{r.high}" for r in message.ranges)


def out_of_range_error(message: OutOfRange, topic: str) -> OffsetOutOfRange:
    """The one-line error for checkpoint offsets the broker does not hold."""
    return OffsetOutOfRange(
        f"{describe_out_of_range(message, topic)} (log start..high-water mark): the broker "
        "lost or trimmed the log. Restore it, or set worker.offset_out_of_range = "
        '"earliest" to resume from the log start')


# -- the child ------------------------------------------------------------------------------


class _Relay(ConsumerRebalanceListener):
    """The child's rebalance listener: asks the worker, waits for its answer."""

    def __init__(self, fetcher: _Fetcher) -> None:
        self.fetcher = fetcher

    def on_partitions_revoked(self, revoked: list[Any]) -> None:
        if revoked:
            self.fetcher.ask(Revoked(sorted(tp.partition for tp in revoked)), Ack)

    def on_partitions_assigned(self, assigned: list[Any]) -> None:
        # The topic's metadata is cached by now (the subscription fetched it).
        total = len(self.fetcher.consumer.partitions_for_topic(
            self.fetcher.settings.topics.events))
        answer = self.fetcher.ask(Assigned(sorted(tp.partition for tp in assigned), of=total),
                                  Seek)
        if answer is None:
            return
        for tp in assigned:
            if tp.partition in answer.earliest:
                self.fetcher.consumer.seek_to_beginning(tp)  # a reset, resolved at poll
            if tp.partition in answer.offsets:
                self.fetcher.consumer.seek(tp, answer.offsets[tp.partition])
                # Checked after the poll: a blocking call here would block the client's
                # own IO thread.
                self.fetcher.sought[tp] = answer.offsets[tp.partition]


class _Fetcher:
    def __init__(self, channel: Channel, settings: Settings) -> None:
        self.channel = channel
        self.settings = settings
        k, w = settings.kafka, settings.worker
        self.codec = EventCodec(settings.events.max_bytes, settings.events.max_slate,
                                settings.events.max_clock_skew_s)
        self.consumer = KafkaConsumer(
            bootstrap_servers=k.bootstrap, group_id=k.group_id, client_id=k.client_id,
            enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=k.session_timeout_ms,
            heartbeat_interval_ms=max(100, k.session_timeout_ms // 4),
            max_poll_records=w.poll_max_records, fetch_max_wait_ms=w.fetch_max_wait_ms,
        )
        self._commit: dict[int, int] | None = None
        self.sought: dict[TopicPartition, int] = {}  # offsets of Seeks not yet checked
        # Set once the worker has closed the channel. Rebalance callbacks (leaving the
        # group on close triggers one) then have no one to ask, and must not raise into
        # kafka-python.
        self.closed = False

    def ask(self, question: Message, answer_type: type) -> Any:
        """Send ``question``, wait for its answer; None once the worker has gone."""
        if self.closed:
            return None
        try:
            self.channel.send(question)
            while True:
                message = self.channel.receive()
                if isinstance(message, answer_type):
                    return message
                self._control(message)
        except ChannelClosed:
            self.closed = True
            return None

    def _check_ranges(self, batch: dict[Any, list[Any]]) -> dict[Any, list[Any]]:
        """Tell the worker which sought offsets lie outside their partition's range on the
        broker; with ``worker.offset_out_of_range = "earliest"``, resume those from the log
        start (dropping nothing the broker still holds). Returns ``batch`` without their
        records.

        The high-water mark is the one the first fetch after the Seek answers with (a
        fetch's records come with it, so none arrive unchecked): Tansu's ListOffsets
        (``end_offsets``) answers below the true end once a partition has several batches.
        A partition no fetch has answered for yet stays pending.
        """
        assigned = self.consumer.assignment()
        sought = {tp: o for tp, o in self.sought.items()
                  if tp in assigned and self.consumer.highwater(tp) is not None}
        self.sought = {tp: o for tp, o in self.sought.items()
                       if tp in assigned and tp not in sought}
        if not sought:
            return batch
        tps = sorted(sought)
        try:
            low = self.consumer.beginning_offsets(tps)
        except KafkaError as exc:
            raise FetchError(f"could not read the log start of {tps}: {exc}") from exc
        high = {tp: self.consumer.highwater(tp) for tp in tps}
        bad = [OffsetRange(tp.partition, sought[tp], low[tp], high[tp]) for tp in tps
               if not low[tp] <= sought[tp] <= high[tp]]
        if not bad:
            return batch
        reset = self.settings.worker.offset_out_of_range == "earliest"
        self.channel.send(OutOfRange(bad, reset))
        topic = self.settings.topics.events
        for r in bad:
            tp = TopicPartition(topic, r.partition)
            batch.pop(tp, None)  # fetched from wherever the client reset it to
            if reset:
                self.consumer.seek(tp, r.low)
        return batch

    def _control(self, message: Message) -> None:
        if isinstance(message, Commit):
            self._commit = message.offsets  # the newest wins; committed between polls
        else:
            raise FetchError(f"unexpected {type(message).__name__} from the worker")

    def run(self) -> None:
        w = self.settings.worker
        self.consumer.subscribe([self.settings.topics.events], listener=_Relay(self))
        while True:
            while (message := self.channel.receive(timeout_s=0)) is not None:
                self._control(message)
            if self._commit:
                self._do_commit(self._commit)
                self._commit = None
            batch = self.consumer.poll(timeout_ms=w.poll_timeout_ms,
                                       max_records=w.poll_max_records)
            if self.closed:
                raise ChannelClosed
            if self.sought:
                batch = self._check_ranges(batch)
            self.channel.send(self._records(batch))

    def _records(self, batch: dict[Any, list[Any]]) -> Records:
        decode = self.codec.decode
        chunks = []
        for tp, records in batch.items():
            offsets: list[int] = []
            keys: list[bytes | None] = []
            values: list[bytes] = []
            events: list[Shown | Feedback] = []
            rejected: list[Rejected] = []
            for record in records:
                try:
                    event = decode(record.value)
                except InvalidEvent as exc:
                    rejected.append(Rejected(record.offset, record.key, record.value,
                                             exc.reason, exc.detail))
                    continue
                offsets.append(record.offset)
                keys.append(record.key)
                values.append(record.value)
                events.append(compact(event))
            chunks.append(Chunk(tp.partition, records[-1].offset + 1, offsets, keys, values,
                                events, rejected))
        positions, highwater = {}, {}
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is not None:  # no fetch answered yet (an empty partition answers 0)
                highwater[tp.partition] = high
                positions[tp.partition] = self.consumer.position(tp)
        return Records(chunks, positions, highwater)

    def _do_commit(self, offsets: dict[int, int]) -> None:
        """Best effort: the worker's checkpoint is the source of truth; commits feed lag
        tooling."""
        mine = {tp.partition for tp in self.consumer.assignment()}
        topic = self.settings.topics.events
        to_commit = {TopicPartition(topic, p): OffsetAndMetadata(o, "", -1)
                     for p, o in offsets.items() if p in mine}
        if not to_commit:
            return
        try:
            self.consumer.commit(to_commit)
        except KafkaError as exc:
            log.warning("offset commit failed (the checkpoint is intact): %s", exc)

    def close(self) -> None:
        self.closed = True
        if self._commit:  # the worker's last checkpoint, sent just before it closed
            self._do_commit(self._commit)
        self.consumer.close()


def main(argv: list[str] | None = None) -> int:
    """Child entry point: ``python -m stream.kafka.fetch FD`` (started by :class:`FetchProcess`)."""
    argv = sys.argv[1:] if argv is None else argv
    # The worker decides when to stop: a terminal's Ctrl-C reaches the whole process
    # group, and the worker still needs this process to answer a final rebalance.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    channel = Channel(socket.socket(fileno=int(argv[0])))
    try:
        start = channel.receive()
    except ChannelClosed:
        return 0
    if not isinstance(start, Start):
        print(f"fetch: expected start, got {type(start).__name__}", file=sys.stderr)
        return 2
    logging.basicConfig(level=start.log_level,
                        format="%(asctime)s %(levelname)s fetch %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(max(start.log_level, logging.WARNING))
    fetcher = None
    try:
        fetcher = _Fetcher(channel, start.settings)
        fetcher.run()
    except ChannelClosed:
        log.info("worker closed the channel: leaving the group")
        return 0
    except Exception as exc:
        log.exception("fetch process failed")
        with contextlib.suppress(ChannelClosed):
            channel.send(Failed(f"{type(exc).__name__}: {exc}"))
        return 1
    finally:
        if fetcher is not None:
            fetcher.close()
    return 0  # pragma: no cover - run() only returns by raising


if __name__ == "__main__":
    sys.exit(main())
