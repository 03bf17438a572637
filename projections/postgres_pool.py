"""One PostgreSQL pool and one LISTEN connection per process, shared by the live namespace and every sandbox.

Each sandbox keeps its projection in a schema of its own. A pool (and, in a gateway, a LISTEN connection)
per schema made a few dozen sandboxes exhaust PostgreSQL's connections. Instead, every namespace of a
process borrows from one `SharedPostgres` per event loop, DSN and *home* schema (the live one): its
connections start with the home schema as their ``search_path``; a borrower of another schema sets
``search_path`` on the connection it acquired, and the pool's reset on release (``RESET ALL``) returns the
connection to the home schema. So a live read costs nothing extra and a sandbox read one ``SET``.

asyncpg caches prepared statements by their text on each connection, whatever the search_path: that is
safe here because PostgreSQL re-parses a prepared statement whenever ``search_path`` changed since its
last use, and every schema has the same tables (the same migrations), so the statement keeps its types.

One connection LISTENs to the channels of every namespace (each schema announces its own channel).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg

from ams.tasks import cancel_all
from projections.postgres_schema import check_schema, connect, create_pool

log = logging.getLogger("ams.postgres")

Notify = Callable[[object, int, str, str], None]  # asyncpg's listener: (connection, pid, channel, payload)
Connected = Callable[[], Awaitable[None]]  # run after each (re)connection: catch up with missed notifications
# While the listening connection is down: transient, retried every second.
CLOSE_SECONDS = 3.0
LISTEN_UNAVAILABLE = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


class SharedPostgres:
    """The process's pool and listener for one DSN and home schema; see `borrow`."""

    def __init__(self, dsn: str, home: str, max_size: int) -> None:
        self.dsn, self.home, self.max_size = dsn, check_schema(home), max_size
        self.borrowers = 0
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self._listeners: list[tuple[str, Notify, Connected]] = []
        self._listening: asyncpg.Connection | None = None
        self._listening_lock = asyncio.Lock()  # a connection runs one operation at a time
        self._listener: asyncio.Task[None] | None = None

    async def pool(self) -> asyncpg.Pool:
        async with self._opening:
            if self._pool is None:
                self._pool = await create_pool(self.dsn, self.home, min_size=0, max_size=self.max_size)
        return self._pool

    async def close(self) -> None:
        if self._listener is not None:
            await cancel_all([self._listener])
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), CLOSE_SECONDS)
            except TimeoutError:  # a connection still busy (or PostgreSQL gone): shutdown must not wait for it
                self._pool.terminate()

    async def listen(self, channel: str, on_notify: Notify, on_connected: Connected) -> None:
        """Deliver ``channel``'s notifications to ``on_notify``; ``on_connected`` runs once listening (and
        after every reconnection), so that what was announced while nobody listened is caught up."""
        self._listeners.append((channel, on_notify, on_connected))
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen())
            return
        async with self._listening_lock:
            if self._listening is None:
                return  # (re)connecting: the connection adds it
            with contextlib.suppress(*LISTEN_UNAVAILABLE):  # lost meanwhile: the reconnection adds it
                await self._listening.add_listener(channel, on_notify)
        await on_connected()

    async def unlisten(self, channel: str, on_notify: Notify) -> None:
        self._listeners = [found for found in self._listeners if found[:2] != (channel, on_notify)]
        async with self._listening_lock:
            if self._listening is not None:
                with contextlib.suppress(*LISTEN_UNAVAILABLE):
                    await self._listening.remove_listener(channel, on_notify)

    async def _listen(self) -> None:
        while True:
            try:
                await self._listen_until_lost(await connect(self.dsn, self.home))
                log.warning("lost PostgreSQL's change notifications; reconnecting in 1s")
            except LISTEN_UNAVAILABLE as error:
                log.warning("PostgreSQL's change notifications are unavailable (%r); reconnecting in 1s", error)
            await asyncio.sleep(1)

    async def _listen_until_lost(self, connection: asyncpg.Connection) -> None:
        try:
            lost = asyncio.Event()
            connection.add_termination_listener(lambda _: lost.set())
            async with self._listening_lock:
                self._listening = connection
                listeners = list(self._listeners)
                for channel, on_notify, _ in listeners:
                    await connection.add_listener(channel, on_notify)
            for _, _, on_connected in listeners:
                await on_connected()
            await lost.wait()
        finally:
            self._listening = None
            with contextlib.suppress(*LISTEN_UNAVAILABLE):
                await asyncio.wait_for(connection.close(), CLOSE_SECONDS)


class SchemaPool:
    """A schema's view of the shared pool: the part of asyncpg.Pool's interface the projections use."""

    def __init__(self, shared: SharedPostgres, schema: str) -> None:
        self.shared, self.schema = shared, check_schema(schema)
        self._closed = False

    @contextlib.asynccontextmanager
    async def acquire(self, *, timeout: float | None = None) -> AsyncIterator[asyncpg.Connection]:
        pool = await self.shared.pool()
        async with pool.acquire(timeout=timeout) as connection:
            if self.schema != self.shared.home:
                await connection.execute(f'SET search_path TO "{self.schema}"')
            yield connection

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self.acquire() as connection:
            rows: list[asyncpg.Record] = await connection.fetch(query, *args)
            return rows

    async def close(self) -> None:
        """Return the borrowed pool; the last borrower of the process closes it."""
        if not self._closed:
            self._closed = True
            await _release(self.shared)


_SHARED: dict[tuple[asyncio.AbstractEventLoop, str, str], SharedPostgres] = {}


def borrow(dsn: str, home: str, schema: str, *, max_size: int = 10) -> SchemaPool:
    """``schema``'s connections from this process's pool for ``dsn`` whose connections see ``home`` (the
    live schema). The pool opens on first use, with the first borrower's ``max_size``; `SchemaPool.close`
    gives it back."""
    key = (asyncio.get_running_loop(), dsn, home)
    shared = _SHARED.get(key)
    if shared is None:
        shared = _SHARED[key] = SharedPostgres(dsn, home, max_size)
    shared.borrowers += 1
    return SchemaPool(shared, schema)


async def _release(shared: SharedPostgres) -> None:
    shared.borrowers -= 1
    if shared.borrowers == 0:
        for key, found in list(_SHARED.items()):
            if found is shared:
                del _SHARED[key]
        await shared.close()
