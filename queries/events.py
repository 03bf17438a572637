"""The audit feed: ``GET /v1/events?after=&key_prefix=&type=&limit=`` (admin scope).

The tenant's events, key-value and stream alike, in log order (see `queries.feed`), each with its actor
and outcome. ``after`` and ``next`` are cursors over the whole log; ``next`` is always given, so a
reader can poll with it.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ams.auth import ADMIN
from ams.http import ApiError, json_response
from commands.envelope import EVENT_TYPES, STREAM_APPEND
from commands.keys import check_prefix
from queries.context import authorize, context
from queries.feed import KV_EVENTS, STREAM_EVENTS, advance, cursor_arguments, cursor_token, interleave, key_range
from queries.history import event_json
from queries.params import limit_param, min_position, positions_value


async def audit_feed(request: Request) -> Response:
    principal = authorize(request, ADMIN)
    ctx = context(request)
    limit = limit_param(request)
    raw_after = request.query_params.get("after")
    after = positions_value(raw_after, "after", ctx.partitions) if raw_after is not None else {}
    prefix = check_prefix(request.query_params.get("key_prefix", ""))
    kind = request.query_params.get("type")
    if kind is not None and kind not in EVENT_TYPES:
        raise ApiError(400, "invalid_type", f"type must be one of {', '.join(sorted(EVENT_TYPES))}, got {kind!r}")
    await ctx.cold.wait_for(await min_position(request, ctx.partitions))
    arguments = (principal.tenant, *cursor_arguments(after, ctx.partitions), *key_range(prefix), limit)
    rows = []
    async with ctx.cold.connection() as connection:
        if kind != STREAM_APPEND:
            condition = "AND h.type = $7" if kind is not None else ""
            rows += await connection.fetch(KV_EVENTS.format(condition=condition), *arguments,
                                           *([kind] if kind is not None else []))
        if kind in (None, STREAM_APPEND):
            rows += await connection.fetch(STREAM_EVENTS, *arguments)
    page = interleave(rows, limit)
    return json_response({"events": [event_json(row) for row in page], "next": cursor_token(advance(after, page))})


routes = [
    Route("/v1/events", audit_feed, methods=["GET"]),
]
