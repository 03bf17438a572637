"""Reads of key-value memory: the current value (hot, with a cold fallback) and time travel."""

from __future__ import annotations

import asyncio
import base64
import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ams.auth import READ
from ams.http import ApiError, json_response
from commands.envelope import now_ms
from commands.keys import InvalidName, check_key, check_prefix, kafka_key, partition_for
from queries import time_travel
from queries.context import QueryContext, authorize, context
from queries.lookup import read_current
from queries.params import min_position


async def get_value(request: Request) -> Response:
    principal = authorize(request, READ)
    key = check_key(request.path_params["key"])
    if "as_of" in request.query_params:
        return await time_travel.get_as_of(request, principal, key)
    ctx = context(request)
    current = await read_current(ctx, principal.tenant, key, await min_position(request, ctx.partitions))
    if current is None:
        raise ApiError(404, "not_found", f"key {key!r} does not exist")
    headers = {"ETag": f'"{current.version}"', "X-AMS-Position": f"{current.partition}:{current.version}"}
    return Response(current.value, media_type="application/json", headers=headers)


MAX_LIST_LIMIT = 1000


def _page_bounds(prefix: str, cursor: str | None) -> tuple[bytes, bytes]:
    """ZRANGEBYLEX bounds: keys starting with ``prefix``, after ``cursor`` when paging."""
    upper = b"[" + prefix.encode() + b"\xff" if prefix else b"+"
    if cursor is None:
        return (b"[" + prefix.encode() if prefix else b"-"), upper
    try:
        after = base64.urlsafe_b64decode(cursor.encode()).decode()
        check_key(after)
    except (ValueError, InvalidName):
        raise ApiError(400, "invalid_cursor", "cursor is not one this API returned; start again without it") from None
    if not after.startswith(prefix):
        raise ApiError(400, "invalid_cursor", "cursor belongs to another prefix; start again without it")
    return b"(" + after.encode(), upper


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIST_LIMIT:
        raise ApiError(400, "invalid_limit", f"limit must be a whole number from 1 to {MAX_LIST_LIMIT}, got {raw!r}")
    return int(raw)


async def list_keys(request: Request) -> Response:
    """The tenant's keys under ``prefix``, in key order, a page at a time: now from the hot projection, or
    ``as_of`` a past position or time from PostgreSQL."""
    principal = authorize(request, READ)
    if "as_of" in request.query_params:
        return await time_travel.list_as_of(request, principal)
    ctx = context(request)
    prefix = check_prefix(request.query_params.get("prefix", ""))
    limit = _limit(request)
    await hot_listing_ready(ctx, await min_position(request, ctx.partitions))
    lower, upper = _page_bounds(prefix, request.query_params.get("cursor"))
    items: list[dict[str, object]] = []
    exhausted = False
    while len(items) < limit and not exhausted:
        candidates = await indexed_keys(ctx, principal.tenant, lower, upper, limit)
        exhausted = len(candidates) < limit
        live = await _live_versions(ctx, principal.tenant, candidates)
        items += [{"key": key, "version": live[key]} for key in candidates if key in live][: limit - len(items)]
        if candidates:
            lower = b"(" + candidates[-1].encode()
    next_cursor = None
    if len(items) == limit and not exhausted:
        next_cursor = base64.urlsafe_b64encode(str(items[-1]["key"]).encode()).decode()
    return json_response({"items": items, "next_cursor": next_cursor})


async def indexed_keys(ctx: QueryContext, tenant: str, lower: bytes, upper: bytes, limit: int) -> list[str]:
    """The first ``limit`` keys of the tenant's index between ZRANGEBYLEX bounds, live or dead: each partition
    keeps its own index, and merging their first ``limit`` keys gives the next page."""
    async with ctx.redis.pipeline(transaction=False) as pipe:
        for partition in range(ctx.partitions):
            pipe.zrangebylex(ctx.applied.layout_of(partition).index(partition, tenant), lower, upper, 0, limit)
        found = await pipe.execute()
    return sorted(key.decode() for keys in found for key in keys)[:limit]


async def hot_listing_ready(ctx: QueryContext, positions: dict[int, int]) -> None:
    """A listing reads every partition of the hot projection: each must be complete and past the token."""
    if not await ctx.applied.wait_applied(positions, ctx.settings.read_wait_timeout):
        raise ApiError(504, "consistency_timeout", f"the hot projection has not reached the requested position "
                       f"within {ctx.settings.read_wait_timeout:g}s; retry the listing")
    deadline = time.monotonic() + ctx.settings.read_wait_timeout
    while None in await ctx.redis.mget([ctx.applied.layout_of(p).live(p) for p in range(ctx.partitions)]):
        if time.monotonic() > deadline:  # a partition is still being restored (or a new sandbox filled)
            raise ApiError(503, "hot_state_recovering", "the hot projection is restoring lost data, so a listing "
                           "could miss keys; retry in a few seconds, or list as_of a position from PostgreSQL",
                           {"Retry-After": "2"})
        await asyncio.sleep(0.1)


async def _live_versions(ctx: QueryContext, tenant: str, keys: list[str]) -> dict[str, int]:
    """Version of each key that a reader may see now (not deleted, not expired)."""
    if not keys:
        return {}
    now = now_ms()
    async with ctx.redis.pipeline(transaction=False) as pipe:
        for key in keys:
            partition = partition_for(kafka_key(tenant, key), ctx.partitions)
            record = ctx.applied.layout_of(partition).record(partition, tenant, key)
            pipe.hmget(record, ["version", "expires", "deleted"])
        rows = await pipe.execute()
    return {
        key: int(version)
        for key, (version, expires, deleted) in zip(keys, rows, strict=True)
        if version is not None and deleted != b"1" and not (int(expires or 0) and int(expires) <= now)
    }


routes = [
    Route("/v1/kv", list_keys, methods=["GET"]),
    Route("/v1/kv/{key:path}", get_value, methods=["GET"]),
]
