"""A lean HTTP/1.1 client for single-client latency: one blocking keep-alive socket, no event loop, no pool.

httpx costs a few hundred microseconds a request, as much as the round trip being measured; this costs a
few tens. The gateway, the bare endpoint and everything else HTTP are timed through the same client, so a
ratio between them is fair. Bodies are sized by Content-Length (every route measured answers one).

A keep-alive connection the server closed while idle (uvicorn does after 5 s) is noticed before sending
and replaced; a request sent on a reused connection that then closes before any byte of an answer (the
server closed it as the request went out) is sent once more on a fresh one. The benchmark's writes carry
an Idempotency-Key, so even a request that did reach the server is applied once.
"""

from __future__ import annotations

import select
import socket
from dataclasses import dataclass


class ConnectionClosed(ConnectionError):
    """The server closed the connection before any byte of its answer."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


class LeanConnection:
    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self.host, self.port = host, port
        self.headers = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self._socket: socket.socket | None = None
        self._buffer = b""
        self.reconnects = 0  # connections replaced because the server had closed them

    def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Answer:
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        message = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self.headers}{extra}"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        reused = self._usable()
        try:
            return self._exchange(message)
        except (ConnectionClosed, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
            self.close()
            self.reconnects += 1
            return self._exchange(message)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
        self._socket, self._buffer = None, b""

    def _usable(self) -> bool:
        """Whether an open connection is kept for the next request (one the server closed is dropped)."""
        if self._socket is None:
            return False
        readable, _, _ = select.select([self._socket], [], [], 0)
        if readable:  # an idle connection has nothing to say: the server closed it (or broke the protocol)
            self.close()
            self.reconnects += 1
            return False
        return True

    def _exchange(self, message: bytes) -> Answer:
        if self._socket is None:
            self._socket = socket.create_connection((self.host, self.port))
            self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socket.sendall(message)
        head = self._read_head()
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", ""):
            raise ValueError("a chunked answer: the lean client reads only bodies with a Content-Length")
        body = self._read_exactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Answer(status, headers, body)

    def _read_head(self) -> bytes:
        first = True
        while b"\r\n\r\n" not in self._buffer:
            chunk = self._receive()
            if not chunk:
                self.close()
                if first:
                    raise ConnectionClosed(f"{self.host}:{self.port} closed the connection before answering")
                raise ConnectionError(f"{self.host}:{self.port} closed the connection in the middle of an answer")
            first = False
            self._buffer += chunk
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        return head

    def _read_exactly(self, length: int) -> bytes:
        while len(self._buffer) < length:
            chunk = self._receive()
            if not chunk:
                self.close()
                raise ConnectionError(f"{self.host}:{self.port} closed the connection in the middle of an answer")
            self._buffer += chunk
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return body

    def _receive(self) -> bytes:
        assert self._socket is not None
        return self._socket.recv(262144)
