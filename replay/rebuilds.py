"""`ams rebuild redis|postgres|vectors|all`: which rebuild runs, and `all` as one sequence with one display.

`all` runs Redis, then PostgreSQL, then the vector views: the hot projection that serves most reads is
fresh soonest, the durable one next, and the slowest (Milvus) last. Each is independent (each reads the
log from offset 0 and swaps on its own), so a failure stops the sequence with the earlier ones swapped
in and the later ones untouched; running it again rebuilds everything anew, resuming unfinished ones.
"""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis
from rich.progress import Progress

from ams.settings import Settings
from ams.tasks import cancel_all
from projections.redis_layout import RedisLayout
from replay.catch_up import progress_display
from replay.rebuild import RebuildState, read_state, rebuild_redis

REBUILDABLE = ("redis", "postgres", "vectors")
ALL = "all"


async def rebuild(settings: Settings, projection: str, *, restart: bool = False, quiet: bool = False,
                  workers: int | None = None) -> list[RebuildState]:
    """Run one rebuild (or all of them, in order); returns each one's final state. ``workers``: processes
    sharing the partitions of the Redis rebuild (default: one per CPU)."""
    if projection == ALL:
        with progress_display(quiet=quiet) as display:
            return [await _one(settings, name, restart=restart, quiet=True, progress=display, workers=workers)
                    for name in REBUILDABLE]
    return [await _one(settings, projection, restart=restart, quiet=quiet, progress=None, workers=workers)]


async def _one(settings: Settings, projection: str, *, restart: bool, quiet: bool,
               progress: Progress | None, workers: int | None) -> RebuildState:
    if projection == "redis":
        if progress is None:
            return await rebuild_redis(settings, restart=restart, quiet=quiet, workers=workers)
        async with _mirrored(settings, "redis", progress):
            return await rebuild_redis(settings, restart=restart, quiet=True, workers=workers)
    if projection == "postgres":
        from replay.rebuild_postgres import rebuild_postgres

        return await rebuild_postgres(settings, restart=restart, quiet=quiet, progress=progress)
    if projection == "vectors":
        from replay.rebuild_vectors import rebuild_vectors

        return await rebuild_vectors(settings, restart=restart, quiet=quiet, progress=progress)
    raise ValueError(f"no projection {projection!r}; rebuildable: {', '.join((*REBUILDABLE, ALL))}")


@contextlib.asynccontextmanager
async def _mirrored(settings: Settings, projection: str, progress: Progress):  # type: ignore[no-untyped-def]
    """Show in ``progress`` the state a rebuild that draws no display of its own keeps in Redis."""
    client = aioredis.from_url(settings.redis_url)
    task = progress.add_task(f"{projection}: rebuilding", total=None, rate="-")

    async def saved() -> RebuildState | None:
        found = await read_state(client, RedisLayout(settings.redis_prefix), projection)
        return RebuildState(**found) if found is not None else None  # type: ignore[arg-type]

    async def follow() -> None:
        while True:
            state = await saved()
            if state is not None:
                progress.update(task, completed=state.applied, total=state.total or None,
                                rate=f"{state.events_per_second:,.0f}",
                                description=f"{projection}: generation {state.generation}, {state.state}")
            await asyncio.sleep(0.5)

    following = asyncio.create_task(follow())
    try:
        yield
    finally:
        await cancel_all([following])
        state = await saved()
        if state is not None:
            progress.update(task, completed=state.applied, total=state.applied,
                            description=f"{projection}: generation {state.generation}, {state.state}")
        await client.aclose()
