"""Real HTTP/1.1 peers on loopback that fail the way keep-alive connections do, for the client's retry tests.

- :class:`ClosingServer` answers the first request of each connection and closes the connection when the
  second one arrives, unanswered: the race of a server closing an idle keep-alive connection just as the
  client reuses it, every time instead of now and then.
- :class:`AnswerDroppingProxy` forwards to a real gateway, but drops the gateway's answer to the first
  request and closes that connection: the request was handled, its answer lost on the way.

Both read messages with a Content-Length (what the gateway and the clients send), in threads of their own,
so sync and async clients alike can use them.
"""

from __future__ import annotations

import socket
import threading
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self


def read_message(connection: socket.socket) -> bytes:
    """One HTTP/1.1 request or response (head and a Content-Length body); b"" if the peer closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = connection.recv(65536)
        if not chunk:
            return b""
        body += chunk
    return head + b"\r\n\r\n" + body


class _Listener(ABC):
    """A loopback listening socket whose connections are each served by ``serve`` in a thread."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.connections = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._socket.close()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return  # closed by __exit__
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve_then_close, args=(connection,), daemon=True).start()

    def _serve_then_close(self, connection: socket.socket) -> None:
        with connection:
            self.serve(connection)

    @abstractmethod
    def serve(self, connection: socket.socket) -> None:
        """Talk to one client connection; it is closed on return."""


class ClosingServer(_Listener):
    """Answers ``{"answered": n}`` to one request per connection, then closes the connection on the next."""

    def __init__(self) -> None:
        super().__init__()
        self.answered = 0
        self.dropped = 0

    def serve(self, connection: socket.socket) -> None:
        if not read_message(connection):
            return
        with self._lock:
            self.answered += 1
            body = b'{"answered": %d}' % self.answered
        connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                           % (len(body), body))
        if read_message(connection):
            with self._lock:
                self.dropped += 1


class AnswerDroppingProxy(_Listener):
    """Relays requests to ``upstream`` (host, port) and answers back, except the first answer, which it drops."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__()
        self.upstream = upstream
        self.dropped_first = False

    def serve(self, connection: socket.socket) -> None:
        with socket.create_connection(self.upstream) as upstream:
            while request := read_message(connection):
                upstream.sendall(request)
                answer = read_message(upstream)
                with self._lock:
                    drop, self.dropped_first = not self.dropped_first, True
                if drop or not answer:
                    return  # closes the client's connection without an answer
                connection.sendall(answer)
