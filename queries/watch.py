"""Watch: ``GET /v1/watch?prefix=`` streams every change to the tenant's keys under the prefix as
Server-Sent Events, in the order PostgreSQL applied them.

Each event's ``id`` is a cursor over the whole log (a position per partition, as in `queries.feed`), so a
client that reconnects with ``Last-Event-ID`` resumes exactly after the last change it received, however
long it was away: the changes come from the history table, not from a buffer. Without ``Last-Event-ID``,
a watch starts at PostgreSQL's current checkpoints. A watch sleeps until the projector's NOTIFY (or a
poll) says its tenant has new changes; a comment every ``KEEPALIVE_SECONDS`` keeps proxies from closing
it. While PostgreSQL is unavailable the stream stays open and resumes when it returns.

A change is an accepted event (a rejected or duplicate command changes nothing); a key that merely
expires produces no event.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import orjson
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ams.auth import READ
from ams.http import ApiError
from commands.keys import check_prefix
from queries.cold import ColdStore
from queries.context import authorize, context
from queries.feed import KV_EVENTS, cursor_arguments, cursor_token, interleave, key_range
from queries.history import raw_json
from queries.params import positions_value

KEEPALIVE_SECONDS = 15.0
RETRY_SECONDS = 1.0
PAGE = 500
CHANGES = KV_EVENTS.format(condition="AND h.status = 'accepted'")


def change_event(row: asyncpg.Record, cursor: dict[int, int]) -> bytes:
    data = {
        "key": row["key"], "type": row["type"], "position": f"{row['partition']}:{row['log_offset']}",
        "version": row["version"], "value": raw_json(row["value"]), "deleted": row["deleted"],
        "expires_at": row["expires_at"], "ts": row["ts"], "actor": row["actor"], "event_id": row["event_id"],
    }
    return b"id: %s\nevent: change\ndata: %s\n\n" % (cursor_token(cursor).encode(), orjson.dumps(data))


class Watch:
    """One open watch: its tenant, prefix, cursor and wake-up event, registered until it is released."""

    def __init__(self, cold: ColdStore, tenant: str, prefix: str, cursor: dict[int, int], partitions: int) -> None:
        self.cold, self.tenant, self.prefix, self.cursor, self.partitions = cold, tenant, prefix, cursor, partitions
        self.wake = cold.watchers.register(tenant)
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.cold.watchers.unregister(self.tenant, self.wake)

    async def _changes(self) -> list[asyncpg.Record]:
        async with self.cold.connection() as connection:
            rows = await connection.fetch(CHANGES, self.tenant, *cursor_arguments(self.cursor, self.partitions),
                                          *key_range(self.prefix), PAGE)
        return interleave(rows, PAGE)

    async def stream(self) -> AsyncIterator[bytes]:
        try:
            yield b": watching\n\n"
            while True:
                self.wake.clear()
                try:
                    rows = await self._changes()
                except ApiError as error:  # PostgreSQL is away: say so in a comment (one line) and retry
                    yield b": %s\n\n" % " ".join(error.message.split()).encode()
                    await asyncio.sleep(RETRY_SECONDS)
                    continue
                for row in rows:  # each partition's rows come in offset order
                    self.cursor[row["partition"]] = row["log_offset"]
                    yield change_event(row, self.cursor)
                if len(rows) >= PAGE:
                    continue
                try:
                    await asyncio.wait_for(self.wake.wait(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield b": keepalive\n\n"
        finally:
            self.release()


async def watch(request: Request) -> Response:
    principal = authorize(request, READ)
    prefix = check_prefix(request.query_params.get("prefix", ""))
    ctx = context(request)
    resume = request.headers.get("last-event-id")
    if resume:
        cursor = positions_value(resume, "Last-Event-ID", ctx.partitions)
    else:
        cursor = await ctx.cold.refresh()
    opened = Watch(ctx.cold, principal.tenant, prefix, cursor, ctx.partitions)
    # The stream releases its slot when it ends or is cancelled; the background task covers a response
    # whose stream never started.
    return StreamingResponse(opened.stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                             background=BackgroundTask(opened.release))


routes = [
    Route("/v1/watch", watch, methods=["GET"]),
]
