"""The fetch process's wire: length-prefixed msgpack frames over a Unix socket (no pickle).

* child → worker: :class:`Records` (one poll: per partition a :class:`Chunk` — the
  valid records' raw values, keys, offsets and compact events in order, the rejected
  ones with their reason — and the fetch positions and high watermarks after the
  poll), :class:`Assigned`, :class:`Revoked`, :class:`OutOfRange` (sent after a Seek
  whose offsets the broker does not hold), :class:`Failed`;
* worker → child: :class:`Start` (the settings), :class:`Seek` (the answer to
  Assigned: the checkpoint's offsets), :class:`Ack` (the answer to Revoked, sent once
  the worker has checkpointed), :class:`Commit`.

Valid events travel as :class:`stream.events.Shown` / :class:`stream.events.Feedback`
beside their raw bytes, so a dead letter still carries the original message.

>>> import socket
>>> a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
>>> Channel(a).send(Commit({0: 42}))
>>> Channel(b).receive(timeout_s=1.0)
Commit(offsets={0: 42})
>>> a.close(); b.close()
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import time

import msgspec

from stream.events import Feedback, Shown
from stream.settings import Settings

_HEADER = struct.Struct(">I")
_SOCKET_BUFFER = 4 * 1024 * 1024  # a poll's frame is ~2 MB: one in flight while one is learnt


class ChannelClosed(Exception):
    """The other end closed the socket."""


class Rejected(msgspec.Struct, array_like=True):
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str
    detail: str


class Chunk(msgspec.Struct, array_like=True):
    """One partition's records of one poll, in offset order: the valid ones decoded
    (``events``, with their offsets, keys and raw values), the rejected ones apart."""

    partition: int
    next_offset: int
    offsets: list[int]
    keys: list[bytes | None]
    values: list[bytes]
    events: list[Shown | Feedback]
    rejected: list[Rejected]


class _Message(msgspec.Struct, tag_field="t", array_like=True):
    pass


class Start(_Message, tag="start"):
    settings: Settings
    log_level: int = logging.INFO


class Records(_Message, tag="records"):
    chunks: list[Chunk]
    positions: dict[int, int]
    highwater: dict[int, int]


class Assigned(_Message, tag="assigned"):
    partitions: list[int]
    of: int = 0  # the topic's partition count (0: unknown)


class Revoked(_Message, tag="revoked"):
    partitions: list[int]


class Seek(_Message, tag="seek"):
    offsets: dict[int, int]
    #: partitions to read from the log start, whatever the group committed
    earliest: list[int] = msgspec.field(default_factory=list)


class OffsetRange(msgspec.Struct, array_like=True):
    """A sought offset and the partition's range on the broker: log start ``low`` to
    high-water mark ``high`` (the offset the next record will get)."""

    partition: int
    offset: int
    low: int
    high: int


class OutOfRange(_Message, tag="out_of_range"):
    ranges: list[OffsetRange]
    reset: bool  # the fetch process resumed these partitions from their log start


class Ack(_Message, tag="ack"):
    pass


class Commit(_Message, tag="commit"):
    offsets: dict[int, int]


class Failed(_Message, tag="failed"):
    error: str


Message = Start | Records | Assigned | Revoked | Seek | OutOfRange | Ack | Commit | Failed


class Channel:
    """Length-prefixed msgpack frames over a stream socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            sock.setsockopt(socket.SOL_SOCKET, opt, _SOCKET_BUFFER)
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(Message)

    def send(self, message: Message) -> None:
        payload = self._encoder.encode(message)
        try:
            self.sock.sendall(_HEADER.pack(len(payload)) + payload)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ChannelClosed from exc

    def receive(self, timeout_s: float | None = None) -> Message | None:
        """The next message; None when none starts within ``timeout_s`` (None: wait)."""
        if timeout_s is not None:
            ready, _, _ = select.select([self.sock], [], [], max(0.0, timeout_s))
            if not ready:
                return None
        (size,) = _HEADER.unpack(self._read(_HEADER.size))
        return self._decoder.decode(self._read(size))

    def _read(self, n: int) -> bytearray:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            try:
                k = self.sock.recv_into(view[got:])
            except ConnectionResetError as exc:
                raise ChannelClosed from exc
            if k == 0:
                raise ChannelClosed
            got += k
        return buf

    def drain_and_close(self, timeout_s: float) -> None:
        """Half-close, then read and drop what the other end still sends until it closes
        too: a peer blocked sending a frame gets to read what was sent to it."""
        deadline = time.monotonic() + timeout_s
        try:
            self.sock.shutdown(socket.SHUT_WR)
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([self.sock], [], [], left)
                if ready and not self.sock.recv(1 << 20):
                    break
        except OSError:
            pass  # already gone
        finally:
            self.sock.close()
