"""Reads of key-value memory from the hot projection."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ams.auth import READ
from ams.http import ApiError
from commands.envelope import now_ms
from commands.keys import check_key, kafka_key, parse_positions, partition_for
from queries.context import QueryContext, authorize, context


async def wait_for_token(request: Request, ctx: QueryContext) -> None:
    """Honour ``X-AMS-Min-Position``: wait until the projection has applied it, or fail clearly."""
    token = request.headers.get("x-ams-min-position")
    if not token:
        return
    positions = parse_positions(token)
    if any(partition >= ctx.partitions for partition in positions):
        raise ApiError(400, "invalid_token", f"consistency token {token!r} names a partition this log does not have")
    if not await ctx.applied.wait_applied(positions, ctx.settings.read_wait_timeout):
        raise ApiError(
            504, "consistency_timeout",
            f"the projection has not reached {token} within {ctx.settings.read_wait_timeout:g}s; retry the read",
        )


async def get_value(request: Request) -> Response:
    principal = authorize(request, READ)
    key = check_key(request.path_params["key"])
    ctx = context(request)
    await wait_for_token(request, ctx)
    partition = partition_for(kafka_key(principal.tenant, key), ctx.partitions)
    value, version, expires, deleted = await ctx.redis.hmget(
        ctx.layout.record(partition, principal.tenant, key), ["value", "version", "expires", "deleted"]
    )
    if value is None or deleted == b"1" or (expires not in (None, b"0") and int(expires) <= now_ms()):
        raise ApiError(404, "not_found", f"key {key!r} does not exist")
    number = int(version)  # type: ignore[arg-type]
    headers = {"ETag": f'"{number}"', "X-AMS-Position": f"{partition}:{number}"}
    return Response(value, media_type="application/json", headers=headers)


routes = [
    Route("/v1/kv/{key:path}", get_value, methods=["GET"]),
]
