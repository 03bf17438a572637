"""`ams rebuild redis|postgres|vectors|all`: which rebuild runs, guarded by its lock, and `all` as one sequence
with one display.

Whoever starts a rebuild (the CLI, or a gateway's admin endpoint through `start_process`) holds the lock of
each projection it rebuilds throughout (`replay.rebuild_lock`): a second rebuild of the same projection is
refused, with a clear error, wherever it is started. Each rebuild publishes its progress through the
lifecycle of `replay.rebuild_state`.

`all` runs Redis, then PostgreSQL, then the vector views: the hot projection that serves most reads is
fresh soonest, the durable one next, and the slowest (Milvus) last. Each is independent (each reads the
log from offset 0 and swaps on its own), so a failure stops the sequence with the earlier ones swapped
in and the later ones untouched; running it again rebuilds everything anew, resuming unfinished ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys

import redis.asyncio as aioredis
from rich.progress import Progress

from ams import credentials
from ams.settings import Settings
from ams.tasks import cancel_all
from projections.redis_layout import RedisLayout
from replay.catch_up import progress_display
from replay.rebuild_lock import RebuildLock
from replay.rebuild_redis import rebuild_redis
from replay.rebuild_state import RebuildState, read_state

REBUILDABLE = ("redis", "postgres", "vectors")
ALL = "all"


def rebuilt(projection: str) -> tuple[str, ...]:
    """The projections a rebuild of ``projection`` rebuilds (and locks); ValueError for an unknown one."""
    if projection == ALL:
        return REBUILDABLE
    if projection not in REBUILDABLE:
        raise ValueError(f"no projection {projection!r}; rebuildable: {', '.join((*REBUILDABLE, ALL))}")
    return (projection,)


async def rebuild(settings: Settings, projection: str, *, restart: bool = False, quiet: bool = False,
                  workers: int | None = None, lock_token: str | None = None) -> list[RebuildState]:
    """Run one rebuild (or all of them, in order); returns each one's final state. ``workers``: processes
    sharing the partitions of the Redis rebuild (default: one per CPU). ``lock_token``: the locks the admin
    endpoint took for this process; otherwise they are taken here. Raises `RebuildRunning` when another
    rebuild holds one of them."""
    projections = rebuilt(projection)
    client = aioredis.from_url(settings.redis_url)
    lock = RebuildLock(client, RedisLayout(settings.redis_prefix), projections, lock_token)
    try:
        async with lock.held(adopt=lock_token is not None):
            if projection == ALL:
                with progress_display(quiet=quiet) as display:
                    return [await _one(settings, name, restart=restart, quiet=True, progress=display,
                                       workers=workers) for name in REBUILDABLE]
            return [await _one(settings, projection, restart=restart, quiet=quiet, progress=None, workers=workers)]
    finally:
        await client.aclose()


def start_process(settings: Settings, projection: str, lock_token: str) -> None:
    """Start `ams rebuild <projection>` as a process of its own, holding the locks taken with ``lock_token``
    (the admin endpoint answers at once; the rebuild outlives the request). Its output goes to
    ``<AMS_HOME>/logs/rebuild-<projection>.log``."""
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"rebuild-{projection}.log", "ab") as output:
        # A rebuild replaces projections' state wholesale: it runs as the operator's principal, not the gateway's.
        subprocess.Popen([sys.executable, "-m", "ams.cli", "rebuild", projection, "--lock-token", lock_token],
                         stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                         env={**os.environ, "AMS_PRINCIPAL": credentials.ADMIN},
                         start_new_session=True)  # not stopped with the gateway that started it


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
    raise ValueError(f"no projection {projection!r}")


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
