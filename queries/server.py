"""Serving the gateway app with uvicorn: on the gateway's port, which the host's gateway processes share, and
for a process of `ams up`'s group also on its own Unix socket, where the launcher probes that one process.

The port is bound with SO_REUSEPORT, so every gateway process has its own listening socket on it and the
kernel spreads new connections among them: requests use every core, and a process that dies takes only its
own connections with it.
"""

from __future__ import annotations

import socket
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

from ams.security import check_gateway
from ams.serving import QuietServer, bounded_http
from ams.settings import Settings


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


def serve(app: Starlette, settings: Settings, host: str, port: int, control_socket: Path | None = None) -> None:
    """Serve ``app`` until a stop signal; also on ``control_socket`` when given."""
    check_gateway(settings, host)
    sockets = [shared_port(host, port)]
    if control_socket is not None:
        sockets.append(unix_socket(control_socket))
    # No X-Forwarded-For rewriting (uvicorn's default, a middleware on every request): nothing in the gateway
    # reads the client's address.
    # Every door bounded (issue 19): the head of a request by `BoundedHttp`, its body by the app's
    # BodyLimitMiddleware, idle connections by the keep-alive timeout, connections by a count past which
    # requests are answered 503 at once.
    config = uvicorn.Config(app, log_level="warning", access_log=False, proxy_headers=False,
                            timeout_graceful_shutdown=settings.shutdown_grace_seconds,
                            http=bounded_http(settings.max_header_bytes, settings.header_timeout_seconds),
                            timeout_keep_alive=settings.idle_timeout_seconds,  # type: ignore[arg-type]
                            limit_concurrency=settings.max_connections,
                            ssl_certfile=settings.tls_certfile or None, ssl_keyfile=settings.tls_keyfile or None)
    QuietServer(config).run(sockets=sockets)
