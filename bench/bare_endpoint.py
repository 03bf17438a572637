"""A bare Starlette endpoint: the HTTP round trip that vector search is compared with.

It reads and parses the same JSON body a search gets and answers a small JSON list, with the same
server (uvicorn) and settings as the gateway, and nothing else.
"""

from __future__ import annotations

import argparse

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def echo(request: Request) -> Response:
    body = orjson.loads(await request.body())
    return Response(orjson.dumps([{"key": "bare", "score": 1.0, "k": body.get("k")}]), media_type="application/json")


app = Starlette(routes=[Route("/search", echo, methods=["POST"])])

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    uvicorn.run(app, host="127.0.0.1", port=parser.parse_args().port, log_level="warning", access_log=False)
