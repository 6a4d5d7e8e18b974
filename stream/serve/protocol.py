"""HTTP/1.1 connections whose request head has a deadline (slow-header clients).

uvicorn arms no timer between accepting a connection and the end of a request's
headers: its keep-alive timeout starts only after a response, and every byte
received cancels it. A client that connects and sends nothing, or sends its
headers a byte at a time, holds a connection (a file descriptor and a parser)
for as long as it likes; enough of them exhaust the server ("slowloris").

:class:`HeadDeadlineProtocol` is uvicorn's httptools protocol with one timer
more: armed when the connection is made and when the next request on a
kept-alive connection begins, disarmed when the request's headers are complete.
When it fires, the client gets ``408`` with the usual error body
(``{"error": "header_timeout", ...}``, ``Connection: close``), the connection
is closed, and ``fairstream_serve_invalid_requests_total{reason="header_timeout"}``
counts it. The deadline counts from the first byte of the request (from the
connection for its first request), so a trickle does not extend it. The body
has its own deadline, ``serve.body_timeout_s`` (:mod:`stream.serve.app`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

REASON = "header_timeout"


def _response(timeout_s: float) -> bytes:
    detail = f"request headers incomplete after {timeout_s:g} s"
    body = json.dumps({"error": REASON, "detail": detail}, separators=(",", ":")).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n"
            + body)


class HeadDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on each request's head (module doc).
    Configure a subclass with :func:`head_deadline_protocol`."""

    header_timeout_s: float = 10.0
    on_timeout: Callable[[], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:  # the next request on a kept-alive connection
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def _arm(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _expired(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        self.transport.write(_response(self.header_timeout_s))
        self.transport.close()
        if self.on_timeout is not None:
            self.on_timeout()


def head_deadline_protocol(timeout_s: float,
                           on_timeout: Callable[[], None] | None = None) -> type[HttpToolsProtocol]:
    """A :class:`HeadDeadlineProtocol` subclass with this deadline and counter hook, for
    ``uvicorn.Config(http=...)``."""
    return type("HeadDeadline", (HeadDeadlineProtocol,),
                {"header_timeout_s": float(timeout_s),
                 "on_timeout": staticmethod(on_timeout) if on_timeout else None})
