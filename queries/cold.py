"""The gateway's side of the durable projection: connections (from the process's one pool, which every
namespace shares), how far PostgreSQL has applied the log, and the watchers waiting for its changes.

The gateway starts whether or not PostgreSQL is up (hot reads and writes do not need it): a background
task migrates the schema once PostgreSQL answers, then LISTENs (on the process's one listening
connection) to the projector's NOTIFY, which arrives when a batch commits. A poll of the checkpoints
covers lost notifications: every 0.5 s while a reader waits for a position, every 5 s otherwise (a
reconnection re-reads the checkpoints at once, so only a notification lost on a live connection waits).
While PostgreSQL is unavailable, the reads that need it answer 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import asyncpg
import orjson

from ams.http import ApiError
from ams.settings import Settings
from ams.tasks import cancel_all
from commands.fold import Record
from commands.keys import format_positions
from projections.postgres import POSTGRES_TRANSIENT, RECORD_COLUMNS, record_from_row
from projections.postgres_pool import SchemaPool, borrow
from projections.postgres_schema import applied_channel, migrate
from projections.sink import TRANSIENT
from queries.tracking import PositionTracker

log = logging.getLogger("ams.gateway")

UNAVAILABLE = (*TRANSIENT, *POSTGRES_TRANSIENT, asyncpg.InterfaceError)
PROJECTION = "postgres"
ACQUIRE_TIMEOUT = 5.0
READY_WAIT_SECONDS = 2.0  # see `ColdStore.connection`
SCHEMA_WAIT_SECONDS = 0.1  # how often a reader looks again for a schema its projection has not made yet

CURRENT = f"""
SELECT {RECORD_COLUMNS},
       (SELECT log_offset FROM checkpoints WHERE projection = '{PROJECTION}' AND partition = $3) AS checkpoint
FROM (SELECT 1) AS one LEFT JOIN kv_current ON tenant = $1 AND key = $2
"""


@dataclass(frozen=True, slots=True)
class ColdRecord:
    """A key's record in PostgreSQL, with the exact bytes of its value and the checkpoint it reflects."""

    record: Record | None
    raw_value: bytes | None
    checkpoint: int  # PostgreSQL's checkpoint of the key's partition when the record was read


class Watchers:
    """Open watches per tenant, each woken when a batch touching its tenant commits; bounded per tenant."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._by_tenant: dict[str, set[asyncio.Event]] = {}

    def register(self, tenant: str) -> asyncio.Event:
        events = self._by_tenant.setdefault(tenant, set())
        if len(events) >= self.limit:
            raise ApiError(429, "too_many_watchers",
                           f"this tenant already has {self.limit} open watches on this gateway; close one first")
        wake = asyncio.Event()
        events.add(wake)
        return wake

    def unregister(self, tenant: str, wake: asyncio.Event) -> None:
        events = self._by_tenant.get(tenant, set())
        events.discard(wake)
        if not events:
            self._by_tenant.pop(tenant, None)

    def wake(self, tenants: Iterable[str] | None) -> None:
        """Wake the watchers of ``tenants`` (None: everyone)."""
        names = list(self._by_tenant) if tenants is None else tenants
        for tenant in names:
            for wake in self._by_tenant.get(tenant, ()):
                wake.set()


class ColdStore(PositionTracker):
    """One namespace's durable projection: ``settings.postgres_schema``, read through the process's shared
    pool (`projections.postgres_pool`) whose home is ``home`` (the live schema; default: this one)."""

    def __init__(self, settings: Settings, home: str | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.home = home or settings.postgres_schema
        self.watchers = Watchers(settings.max_watchers_per_tenant)
        self._pool: SchemaPool | None = None
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._outage_logged = False

    async def start(self) -> None:
        """Start reading; a sandbox's reader starts once its projection has made its schema (the bound on a
        sandbox's start applies), the live one at once (it answers 503 until PostgreSQL does)."""
        self._pool = borrow(self.settings.postgres_dsn, self.home, self.settings.postgres_schema, max_size=10)
        self._tasks = [asyncio.create_task(self._prepare()), asyncio.create_task(self._poll())]
        if self.settings.postgres_schema != self.home:
            await self._ready.wait()

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        if self._pool is not None:
            await self._pool.shared.unlisten(applied_channel(self.settings.postgres_schema), self._on_notify)
            await self._pool.close()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; a 503 that says so when PostgreSQL is unavailable. A namespace this gateway
        has just begun to serve (a sandbox created a moment ago) is waited for while its schema is prepared,
        for up to ``READY_WAIT_SECONDS``."""
        if self._pool is not None and not self._ready.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(READY_WAIT_SECONDS):
                    await self._ready.wait()
        if self._pool is None or not self._ready.is_set():
            raise self._unavailable("it has not answered since this gateway started")
        try:
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as connection:
                yield connection
        except UNAVAILABLE as error:
            raise self._unavailable(repr(error)) from None

    @staticmethod
    def _unavailable(why: str) -> ApiError:
        return ApiError(503, "postgres_unavailable",
                        f"PostgreSQL, the durable projection, is unavailable ({why}); history, time travel, "
                        "streams, the audit feed and watch need it: retry shortly", {"Retry-After": "1"})

    async def wait_for(self, positions: dict[int, int]) -> None:
        """Wait until PostgreSQL has applied ``positions``, or answer 504."""
        if not await self.wait_applied(positions, self.settings.read_wait_timeout):
            raise ApiError(
                504, "consistency_timeout",
                f"PostgreSQL has not applied {format_positions(positions)} within "
                f"{self.settings.read_wait_timeout:g}s; retry the read",
            )

    async def current(self, tenant: str, key: str, partition: int) -> ColdRecord:
        async with self.connection() as connection:
            row = await connection.fetchrow(CURRENT, tenant, key, partition)
        checkpoint = row["checkpoint"] if row["checkpoint"] is not None else -1
        if row["version"] is None:
            return ColdRecord(None, None, checkpoint)
        return ColdRecord(record_from_row(row), row["value"], checkpoint)

    async def refresh(self) -> dict[int, int]:
        async with self.connection() as connection:
            rows = await connection.fetch(
                "SELECT partition, log_offset FROM checkpoints WHERE projection = $1", PROJECTION)
        before = dict(self.applied)
        self._set({row["partition"]: row["log_offset"] for row in rows})
        if self.applied != before:
            self.watchers.wake(None)
        return dict(self.applied)

    def _on_notify(self, connection: object, pid: int, channel: str, payload: str) -> None:
        announced = orjson.loads(payload)
        partition, offset = int(announced["p"]), int(announced["o"])
        if offset > self.applied.get(partition, -1):
            self._set({partition: offset})
        self.watchers.wake(announced.get("t"))

    async def _prepare(self) -> None:
        """Migrate the schema once PostgreSQL answers, then listen to the projector's announcements."""
        assert self._pool is not None
        schema = self.settings.postgres_schema
        while True:
            try:
                async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as connection:
                    await migrate(connection, schema)
                break
            except UNAVAILABLE as error:
                log.warning("PostgreSQL is unavailable to migrate schema %s (%r); retrying in 1s", schema, error)
                await asyncio.sleep(1)
            except asyncpg.InsufficientPrivilegeError:
                # The gateway may only read: the schema's projection has not made it (or its latest migration)
                # yet, and will shortly.
                await asyncio.sleep(SCHEMA_WAIT_SECONDS)
        self._ready.set()
        await self._pool.shared.listen(applied_channel(schema), self._on_notify, self._caught_up)

    async def _caught_up(self) -> None:
        """Listening (again): changes made while nobody listened were not announced."""
        with contextlib.suppress(ApiError, asyncpg.UndefinedTableError):  # a sandbox being dropped, as in _poll
            await self.refresh()
        self.watchers.wake(None)

    async def _poll(self) -> None:
        while True:
            await self.next_poll()  # every 0.5 s while a reader waits on PostgreSQL, else every 5 s
            try:
                await self.refresh()
                self._outage_logged = False
            except asyncpg.UndefinedTableError:  # a sandbox dropped while this gateway still served it
                continue
            except ApiError as error:
                if not self._outage_logged:
                    log.warning("cannot read PostgreSQL's checkpoints: %s", error.message)
                    self._outage_logged = True
