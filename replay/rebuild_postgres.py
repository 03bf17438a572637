"""`ams rebuild postgres`: the durable projection rebuilt from offset 0 in a schema beside the live one.

1. Schema ``<live>_rebuild`` is migrated and filled from offset 0 by the same `Projector` and
   `PostgresSink` the live worker runs, while the live schema keeps serving and receiving events.
2. Caught up with the head, the rebuild takes the live schema's batch lock exclusively (a session lock
   on its own connection). Every live batch holds that lock shared for its whole transaction, taken
   before it names a table; so the exclusive lock waits for the batch in progress and holds off the next.
3. Under the lock: read the live checkpoints, apply the log to the new schema exactly through them (the
   short tail that arrived since step 2), then rename, in one transaction, ``<live>`` to ``<live>_retired``
   and ``<live>_rebuild`` to ``<live>``; commit, unlock.
4. The live worker's next batch gets the lock, then names its tables: its search_path (the live name)
   now finds the new schema. Renaming a schema invalidates every cached plan, asyncpg's prepared
   statements included, so they are planned again against the new tables. The checkpoint the worker
   finds is the one it expects, or one ahead of it when the rebuild had read further than the worker
   (the new schema then holds what lies between, and the worker skips it): no gap and no repeat either
   way. Gateways read through the same name and see the new schema from their next statement.
5. After a grace period, the retired schema is dropped.

Interrupted before the commit of 3, the live schema is untouched and ``<live>_rebuild`` keeps its own
checkpoints: running the command again resumes it (``--restart`` drops it first). Interrupted after,
the swap is done; the next run drops the leftover retired schema first.
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import redis.asyncio as aioredis
from rich.progress import Progress

from ams import kafka_clients, namespaces
from ams.settings import Settings
from projections.postgres import PostgresSink
from projections.postgres_schema import BATCH_LOCK_EXCLUSIVE, BATCH_UNLOCK, check_schema
from projections.projectors import projector_for
from projections.redis_layout import RedisLayout
from replay.catch_up import Builder, Tracker, progress_display, started_consumer
from replay.rebuild_state import GRACE_SECONDS, RebuildState, recorded

PROJECTION = "postgres"


def schema_names(settings: Settings) -> tuple[str, str, str]:
    """(live, being built, retired) schema names."""
    live = settings.postgres_schema
    return live, check_schema(f"{live}_rebuild"), check_schema(f"{live}_retired")


async def rebuild_postgres(settings: Settings, *, restart: bool = False, quiet: bool = False,
                           progress: Progress | None = None) -> RebuildState:
    live, building, retired = schema_names(settings)
    redis = aioredis.from_url(settings.redis_url)
    layout = RedisLayout(settings.redis_prefix)
    admin = await asyncpg.connect(settings.postgres_dsn)
    display = progress or progress_display(quiet=quiet)
    state = RebuildState(PROJECTION, generation=0)
    try:
        async with recorded(redis, layout, state):
            await admin.execute(f'DROP SCHEMA IF EXISTS "{retired}" CASCADE')  # a run interrupted after its swap
            if restart:
                await admin.execute(f'DROP SCHEMA IF EXISTS "{building}" CASCADE')
            with display if progress is None else contextlib.nullcontext():  # `all` shows its own
                tracker = Tracker(state, redis, layout, display)
                await _build_and_swap(settings, admin, tracker, live, building, retired)
                state.state = "dropping"
                tracker.describe("dropping the retired schema")
                await tracker.save()
                await asyncio.sleep(GRACE_SECONDS)
                await admin.execute(f'DROP SCHEMA IF EXISTS "{retired}" CASCADE')
                tracker.describe("done")
        return state
    finally:
        await admin.close()
        await redis.aclose()


async def _build_and_swap(settings: Settings, admin: asyncpg.Connection, tracker: Tracker, live: str, building: str,
                          retired: str) -> None:
    sink = PostgresSink(settings.postgres_dsn, building, settings.partitions, projection=PROJECTION)
    projector = projector_for(sink, settings, namespaces.live(settings), label="postgres rebuild")
    consumer = await started_consumer(settings)
    try:
        builder = Builder(projector, consumer, settings.events_topic, settings.partitions, tracker)
        await builder.start()  # migrates the new schema
        tracker.describe(f"building schema {building} from offset 0")
        await builder.to_head()
        tracker.describe(f"swapping {building} in as {live}")
        await admin.execute(BATCH_LOCK_EXCLUSIVE, live)
        try:
            await builder.through(await _live_checkpoints(admin, live))
            await sink.close()  # its connections name the schema about to be renamed
            async with admin.transaction():
                if await admin.fetchval("SELECT to_regnamespace($1) IS NOT NULL", f'"{live}"'):
                    await admin.execute(f'ALTER SCHEMA "{live}" RENAME TO "{retired}"')
                await admin.execute(f'ALTER SCHEMA "{building}" RENAME TO "{live}"')
        finally:
            await admin.execute(BATCH_UNLOCK, live)
        tracker.state.switched = list(range(settings.partitions))
    finally:
        await kafka_clients.stop(consumer)
        await projector.dead_letters.close()
        await sink.close()


async def _live_checkpoints(admin: asyncpg.Connection, live: str) -> dict[int, int]:
    """The live schema's checkpoints (none when it does not exist yet)."""
    if not await admin.fetchval("SELECT to_regclass($1) IS NOT NULL", f'"{live}".checkpoints'):
        return {}
    rows = await admin.fetch(f'SELECT partition, log_offset FROM "{live}".checkpoints WHERE projection = $1',
                             PROJECTION)
    return {row["partition"]: row["log_offset"] for row in rows}
