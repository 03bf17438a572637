"""A bare Starlette endpoint: the HTTP floor the gateway's routes are compared with.

``GET /value`` answers a small constant JSON value (a GET's floor); ``POST /search`` reads and parses the
JSON body a vector search gets and answers a small JSON list (a search's floor). Served like the gateway:
uvicorn with uvloop and httptools, its default keep-alive, and as many processes as the gateway runs, all
sharing one port through SO_REUSEPORT.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ams.settings import Settings
from bench.lean_http import LeanConnection

VALUE = b'{"step": 1, "note": "bare endpoint"}'


async def value(request: Request) -> Response:
    return Response(VALUE, media_type="application/json")


async def search(request: Request) -> Response:
    body = orjson.loads(await request.body())
    return Response(orjson.dumps([{"key": "bare", "score": 1.0, "k": body.get("k")}]), media_type="application/json")


app = Starlette(routes=[Route("/value", value), Route("/search", search, methods=["POST"])])


def gateway_processes() -> int:
    """How many processes the gateway runs (``AMS_GATEWAY_PROCESSES``; by default one per core), so that the
    bare endpoint is served by as many."""
    return Settings().gateway_processes


def serve(port: int) -> None:
    """Serve ``app`` on a loopback port that other processes may share (SO_REUSEPORT)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind(("127.0.0.1", port))
    config = uvicorn.Config(app, loop="uvloop", http="httptools", log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[listener])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def running(processes: int) -> Iterator[int]:
    """The bare endpoint served by ``processes`` processes on one free port, until the block ends; its port."""
    port = free_port()
    children = [subprocess.Popen([sys.executable, "-m", "bench.bare_endpoint", "--port", str(port)])
                for _ in range(processes)]
    try:
        _wait_answering(port)
        yield port
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait()


def _wait_answering(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        probe = LeanConnection("127.0.0.1", port)
        try:
            probe.request("GET", "/value")
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"the bare endpoint did not answer on port {port} within {timeout:g}s") from None
            time.sleep(0.1)
        finally:
            probe.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    serve(parser.parse_args().port)
