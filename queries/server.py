"""Serving the gateway app with uvicorn: on the gateway's port, which the host's gateway processes share, and
for a process of `ams up`'s group also on its own Unix socket, where the launcher probes that one process.

The port is bound with SO_REUSEPORT, so every gateway process has its own listening socket on it and the
kernel spreads new connections among them: requests use every core, and a process that dies takes only its
own connections with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from ams.settings import Settings

TICK_SECONDS = 1.0


def shared_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` that other processes may bind too (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise SystemExit(f"the gateway cannot listen on {host}:{port}: {error}") from None
    return sock


def unix_socket(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # the file of this process's predecessor: nothing listens there any more
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    return sock


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


def serve(app: Starlette, settings: Settings, host: str, port: int, control_socket: Path | None = None) -> None:
    """Serve ``app`` until a stop signal; also on ``control_socket`` when given."""
    sockets = [shared_port(host, port)]
    if control_socket is not None:
        sockets.append(unix_socket(control_socket))
    # No X-Forwarded-For rewriting (uvicorn's default, a middleware on every request): nothing in the gateway
    # reads the client's address.
    config = uvicorn.Config(app, log_level="warning", access_log=False, proxy_headers=False,
                            timeout_graceful_shutdown=settings.shutdown_grace_seconds)
    QuietServer(config).run(sockets=sockets)
