"""A stream's observations from PostgreSQL, in log order: ``GET /v1/streams/{name}?after=&limit=``.

``after`` is the position of the last entry already read (each entry carries its own); ``next`` is the
position to pass as ``after`` to continue, also when the page is empty, so a reader can poll with it.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ams.auth import READ
from ams.http import json_response
from commands.keys import check_key
from queries.context import authorize, context
from queries.history import raw_json
from queries.params import limit_param, min_position, position_param

PAGE = """
SELECT partition, log_offset, event_id, actor, ts, data FROM stream_entries
WHERE tenant = $1 AND stream = $2 AND (log_offset, partition) > ($3, $4)
ORDER BY log_offset, partition LIMIT $5
"""


async def read_stream(request: Request) -> Response:
    principal = authorize(request, READ)
    name = check_key(request.path_params["name"], "stream")
    ctx = context(request)
    limit = limit_param(request)
    after = position_param(request, "after", ctx.partitions)
    await ctx.cold.wait_for(await min_position(request, ctx.partitions))
    start = (after.offset, after.partition) if after is not None else (-1, -1)
    async with ctx.cold.connection() as connection:
        rows = await connection.fetch(PAGE, principal.tenant, name, *start, limit)
    entries = [
        {"position": f"{row['partition']}:{row['log_offset']}", "event_id": row["event_id"], "ts": row["ts"],
         "actor": row["actor"], "data": raw_json(row["data"])}
        for row in rows
    ]
    following = entries[-1]["position"] if entries else (str(after) if after is not None else None)
    return json_response({"stream": name, "entries": entries, "next": following})


routes = [
    Route("/v1/streams/{name:path}", read_stream, methods=["GET"]),
]
