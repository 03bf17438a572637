"""Reads of key-value memory: the current value (hot, with a cold fallback) and time travel."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ams.auth import READ
from ams.http import ApiError
from commands.keys import check_key
from queries import time_travel
from queries.context import authorize, context
from queries.lookup import read_current
from queries.params import min_position


async def get_value(request: Request) -> Response:
    principal = authorize(request, READ)
    key = check_key(request.path_params["key"])
    if "as_of" in request.query_params:
        return await time_travel.get_as_of(request, principal, key)
    ctx = context(request)
    current = await read_current(ctx, principal.tenant, key, min_position(request, ctx.partitions))
    if current is None:
        raise ApiError(404, "not_found", f"key {key!r} does not exist")
    headers = {"ETag": f'"{current.version}"', "X-AMS-Position": f"{current.partition}:{current.version}"}
    return Response(current.value, media_type="application/json", headers=headers)


async def list_values(request: Request) -> Response:
    principal = authorize(request, READ)
    if "as_of" not in request.query_params:
        raise ApiError(400, "missing_as_of", "GET /v1/kv lists the keys under a prefix as of a past position or "
                       "time: add as_of=<position or RFC 3339 time>")
    return await time_travel.list_as_of(request, principal)


routes = [
    Route("/v1/kv", list_values, methods=["GET"]),
    Route("/v1/kv/{key:path}", get_value, methods=["GET"]),
]
