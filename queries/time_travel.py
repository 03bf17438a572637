"""Time travel: the state of a key, or of every key under a prefix, as it was at a point in the past.

``as_of`` is either positions or a time:

- ``as_of=3:42`` (or ``0:15,3:42``): the state after every event at or before those offsets of the
  partitions named. A partition the positions do not name contributes nothing, because offsets of
  different partitions are not ordered; pass a full token (an SSE event id, `GET /v1/positions`) to
  see every partition. A TTL is judged at the time of the tenant's newest event the positions cover.
- ``as_of=2025-01-31T12:00:00Z``: per key, the state after the key's events up to (not including) the
  first one stamped after that time. A TTL is judged at that time.

Both are answered from the history, whose rows carry the key's state after each event, so the answer is
the fold of exactly that prefix of the log.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from starlette.requests import Request
from starlette.responses import Response

from ams.auth import Principal
from ams.http import ApiError, json_response
from commands.keys import check_key, check_prefix, kafka_key, partition_for
from queries.context import QueryContext, context
from queries.feed import key_range
from queries.history import raw_json
from queries.params import AsOf, as_of_value, limit_param, min_position, within_log

ROW = "h.key, h.version, h.value, h.deleted, h.expires_at"
VISIBLE = "version IS NOT NULL AND NOT deleted AND (expires_at IS NULL OR expires_at > $3)"
# $1 tenant, $2 key (one key) or $2 prefix low, $4 prefix high, $5 cursor, $6 limit (listing); then as_of.
ONE_KEY = "h.tenant = $1 AND h.key = $2"
KEY_RANGE = "h.tenant = $1 AND h.key >= $2 AND h.key < $4 AND h.key > $5"

UP_TO_POSITIONS = """
SELECT {row} FROM (
  SELECT DISTINCT ON (h.key) {columns} FROM kv_history h
  JOIN unnest(${p}::int[], ${o}::int8[]) AS cut(partition, upto)
    ON h.partition = cut.partition AND h.log_offset <= cut.upto
  WHERE {where}
  ORDER BY h.key, h.log_offset DESC, h.partition DESC
) AS h WHERE {visible} ORDER BY h.key {limit}
"""
UP_TO_TIME = """
SELECT {row} FROM (
  SELECT DISTINCT ON (h.key) {columns} FROM (
    SELECT h.*, bool_or(h.ts > ${t}) OVER (PARTITION BY h.key ORDER BY h.log_offset, h.partition) AS later
    FROM kv_history h WHERE {where}
  ) AS h WHERE NOT h.later
  ORDER BY h.key, h.log_offset DESC, h.partition DESC
) AS h WHERE {visible} ORDER BY h.key {limit}
"""
REFERENCE_TIME = """
SELECT max(newest.ts) FROM unnest($2::int[], $3::int8[]) AS cut(partition, upto)
CROSS JOIN LATERAL (
  SELECT ts FROM kv_history WHERE tenant = $1 AND partition = cut.partition AND log_offset <= cut.upto
  ORDER BY log_offset DESC LIMIT 1) AS newest
"""


def _query(as_of: AsOf, where: str, first_free: int, limit: str) -> str:
    columns = "h.key, h.version, h.value, h.deleted, h.expires_at, h.partition, h.log_offset"
    if as_of.positions is not None:
        return UP_TO_POSITIONS.format(row=ROW, columns=columns, where=where, visible=VISIBLE, limit=limit,
                                      p=first_free, o=first_free + 1)
    return UP_TO_TIME.format(row=ROW, columns=columns, where=where, visible=VISIBLE, limit=limit, t=first_free)


def _as_of_args(as_of: AsOf) -> list[Any]:
    if as_of.positions is not None:
        return [list(as_of.positions), list(as_of.positions.values())]
    return [as_of.ts]


async def _reference_time(connection: asyncpg.Connection, tenant: str, as_of: AsOf) -> int:
    """The moment at which TTLs are judged: the as_of time, or the time of the tenant's newest event the
    positions cover (-1 when they cover none: then nothing is visible anyway)."""
    if as_of.ts is not None:
        return as_of.ts
    assert as_of.positions is not None
    newest = await connection.fetchval(REFERENCE_TIME, tenant, list(as_of.positions), list(as_of.positions.values()))
    return -1 if newest is None else int(newest)


async def _prepare(request: Request, ctx: QueryContext) -> AsOf:
    as_of = as_of_value(request.query_params["as_of"], ctx.partitions)
    await within_log(request, as_of.positions or {}, "as_of")
    await ctx.cold.wait_for({**await min_position(request, ctx.partitions), **(as_of.positions or {})})
    return as_of


async def get_as_of(request: Request, principal: Principal, key: str) -> Response:
    """``GET /v1/kv/{key}?as_of=``: the value the key had, exactly as written, or 404."""
    ctx = context(request)
    as_of = await _prepare(request, ctx)
    async with ctx.cold.connection() as connection:
        reference = await _reference_time(connection, principal.tenant, as_of)
        row = await connection.fetchrow(_query(as_of, ONE_KEY, 4, ""), principal.tenant, key, reference,
                                        *_as_of_args(as_of))
    home = partition_for(kafka_key(principal.tenant, key), ctx.partitions)
    if row is None:
        hint = "" if as_of.positions is None or home in as_of.positions else (
            f" (the key lives in partition {home}, which as_of does not name)")
        raise ApiError(404, "not_found", f"key {key!r} did not exist as of {as_of.text}{hint}")
    headers = {"ETag": f'"{row["version"]}"', "X-AMS-Position": f"{home}:{row['version']}"}
    return Response(row["value"], media_type="application/json", headers=headers)


async def list_as_of(request: Request, principal: Principal) -> Response:
    """``GET /v1/kv?prefix=&as_of=&limit=&cursor=``: the live keys under the prefix as of then, by key."""
    ctx = context(request)
    prefix = check_prefix(request.query_params.get("prefix", ""))
    limit = limit_param(request)
    cursor = check_key(request.query_params["cursor"], "cursor") if "cursor" in request.query_params else ""
    as_of = await _prepare(request, ctx)
    low, high = key_range(prefix)
    async with ctx.cold.connection() as connection:
        reference = await _reference_time(connection, principal.tenant, as_of)
        rows = await connection.fetch(_query(as_of, KEY_RANGE, 7, "LIMIT $6"), principal.tenant, low, reference,
                                      high, cursor, limit + 1, *_as_of_args(as_of))
    items = [{"key": row["key"], "version": row["version"], "value": raw_json(row["value"])} for row in rows[:limit]]
    more = len(rows) > limit
    return json_response({"as_of": as_of.text, "prefix": prefix, "items": items,
                          "next_cursor": items[-1]["key"] if more else None})
