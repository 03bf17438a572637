"""Serving a Starlette app with uvicorn, quietly and within bounds: the gateway's processes and the
projection workers' health pages.

`BoundedHttp` is uvicorn's httptools protocol with the two limits uvicorn lacks: a request's line and
headers may take at most ``max_header_bytes`` (431 past it) and must arrive within ``header_timeout``
seconds (408 past it; a connection that sends nothing at all is closed then too). Without them one client
could send 8 MB of headers, or hold a connection open for ever a byte at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from functools import partial
from types import FrameType

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

TICK_SECONDS = 1.0
LINGER_SECONDS = 1.0


class QuietServer(uvicorn.Server):
    """uvicorn's server, without its 10 wake-ups a second when idle.

    uvicorn's main loop sleeps 0.1 s at a time to notice a stop signal, and refreshes its Date header every
    tenth time. This one refreshes the header once a second and is woken at once by the signal instead."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._wake: Callable[[], object] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._wake is not None:
            self._wake()

    async def main_loop(self) -> None:
        stop = asyncio.Event()
        self._wake = partial(asyncio.get_running_loop().call_soon_threadsafe, stop.set)
        while not await self.on_tick(0):  # a counter of 0 makes uvicorn refresh the Date header
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TICK_SECONDS)


class BoundedHttp(HttpToolsProtocol):
    """A head is measured twice: its line and headers as httptools parses them (exact, checked once the head
    is complete), and the bytes received while it is incomplete (so that a header too large is cut off
    before httptools has buffered all of it, not after)."""

    max_header_bytes = 32 << 10
    header_timeout = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._in_head, self._received_in_head, self._head_size, self._refused = True, 0, 0, False
        self._head_timer: asyncio.TimerHandle | None = None
        self._time_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._received_in_head += len(data)
        super().data_received(data)
        if self._in_head and self._received_in_head > self.max_header_bytes:
            self._refuse_large_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_size = 0
        self._time_head()

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_head_timer()
        if self._head_size > self.max_header_bytes:
            self._refuse_large_head()
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        super().on_message_complete()
        self._in_head, self._received_in_head = True, 0

    def _refuse_large_head(self) -> None:
        self._refuse(431, "Request Header Fields Too Large", "headers_too_large",
                     f"the request line and headers pass the limit of {self.max_header_bytes} bytes")

    def _time_head(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_too_slow)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:  # no response of this connection under way
            self._refuse(408, "Request Timeout", "header_timeout",
                         f"the request line and headers did not arrive within {self.header_timeout:g}s")
        else:
            self.transport.close()

    def _refuse(self, status: int, reason: str, code: str, message: str) -> None:
        """Answer with a JSON error and end the connection. What the client still sends is read and dropped
        for up to ``LINGER_SECONDS``: closed at once with unread data, the connection would be reset, and a
        client still sending would lose the answer."""
        self._refused = True
        if self.transport.is_closing():
            return
        body = orjson.dumps({"error": {"code": code, "message": message}})
        head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
        self.transport.write(head.encode() + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)


def bounded_http(max_header_bytes: int, header_timeout: float) -> type[BoundedHttp]:
    """The protocol class for uvicorn's ``http`` setting, with these bounds."""
    return type("BoundedHttp", (BoundedHttp,),
                {"max_header_bytes": max_header_bytes, "header_timeout": header_timeout})
