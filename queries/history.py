"""A key's history from PostgreSQL: every event, what the fold decided, and the key's state after it.

``GET /v1/kv/{key}/history?order=newest|oldest&limit=&cursor=``. The order is the log's: a key's events
all live in its partition, in offset order. ``cursor`` is the position of the last entry of the previous
page; ``next_cursor`` is null on the last page.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ams.auth import READ
from ams.http import json_response
from commands.keys import check_key
from queries.context import authorize, context
from queries.params import limit_param, min_position, order_param, position_param

EVENT_COLUMNS = ("partition, log_offset, event_id, type, key, actor, command_id, ts, data, status, reason, "
                 "outcome_version")
STATE_COLUMNS = "version, value, deleted, expires_at"

PAGE = {
    "newest": f"""
        SELECT {EVENT_COLUMNS}, {STATE_COLUMNS} FROM kv_history
        WHERE tenant = $1 AND key = $2 AND (log_offset, partition) < ($3, $4)
        ORDER BY log_offset DESC, partition DESC LIMIT $5""",
    "oldest": f"""
        SELECT {EVENT_COLUMNS}, {STATE_COLUMNS} FROM kv_history
        WHERE tenant = $1 AND key = $2 AND (log_offset, partition) > ($3, $4)
        ORDER BY log_offset, partition LIMIT $5""",
}
START = {"newest": (2**63 - 1, 2**31 - 1), "oldest": (-1, -1)}


def raw_json(value: bytes | None) -> orjson.Fragment | None:
    """Embed JSON stored as bytes into a response exactly as it was written."""
    return orjson.Fragment(value) if value is not None else None


def event_json(row: asyncpg.Record) -> dict[str, Any]:
    """What a key-value event asked for and what the fold decided."""
    return {
        "position": f"{row['partition']}:{row['log_offset']}",
        "event_id": row["event_id"],
        "type": row["type"],
        "key": row["key"],
        "ts": row["ts"],
        "actor": row["actor"],
        "command_id": row["command_id"],
        "data": raw_json(row["data"]),
        "outcome": {"status": row["status"], "reason": row["reason"], "version": row["outcome_version"]},
    }


def state_json(row: asyncpg.Record) -> dict[str, Any]:
    """The key's state after the event (version null while the key was never written)."""
    return {"version": row["version"], "value": raw_json(row["value"]), "deleted": row["deleted"],
            "expires_at": row["expires_at"]}


async def get_history(request: Request) -> Response:
    principal = authorize(request, READ)
    key = check_key(request.path_params["key"])
    ctx = context(request)
    order, limit = order_param(request), limit_param(request)
    cursor = position_param(request, "cursor", ctx.partitions)
    await ctx.cold.wait_for(await min_position(request, ctx.partitions))
    after = (cursor.offset, cursor.partition) if cursor is not None else START[order]
    async with ctx.cold.connection() as connection:
        rows = await connection.fetch(PAGE[order], principal.tenant, key, *after, limit + 1)
    page = rows[:limit]
    entries = [{**event_json(row), "state": state_json(row)} for row in page]
    more = len(rows) > limit
    return json_response({"key": key, "order": order, "entries": entries,
                          "next_cursor": entries[-1]["position"] if more else None})


routes = [
    Route("/v1/kv/{key:path}/history", get_history, methods=["GET"]),
]
