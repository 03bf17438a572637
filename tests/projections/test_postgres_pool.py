"""The process's shared PostgreSQL pool against a real server: one pool and one listening connection for
many schemas, each borrower reading its own schema, the home schema restored on release."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from ams.settings import Settings
from projections.postgres_pool import Notify, borrow
from projections.postgres_schema import applied_channel, migrate

pytestmark = pytest.mark.stack

CHECKPOINT = "SELECT log_offset FROM checkpoints WHERE projection = 'test'"


async def test_borrowers_share_one_connection_and_each_reads_its_own_schema(settings: Settings) -> None:
    home, other = (f"test_pool_{uuid.uuid4().hex[:10]}" for _ in range(2))
    live = borrow(settings.postgres_dsn, home, home, max_size=1)  # one connection: every statement reuses it
    sandbox = borrow(settings.postgres_dsn, home, other)
    try:
        assert sandbox.shared is live.shared
        for pool, offset in ((live, 1), (sandbox, 2)):
            async with pool.acquire() as connection:
                await migrate(connection, pool.schema)
                await connection.execute("INSERT INTO checkpoints VALUES ('test', 0, $1)", offset)
        for _ in range(3):  # the same statement, prepared once on that connection, follows the search_path
            assert [row["log_offset"] for row in await sandbox.fetch(CHECKPOINT)] == [2]
            assert [row["log_offset"] for row in await live.fetch(CHECKPOINT)] == [1]
        async with sandbox.acquire() as connection:
            assert await connection.fetchval("SHOW search_path") == other
        async with live.acquire() as connection:  # released: back to the home schema
            assert await connection.fetchval("SHOW search_path") == home
    finally:
        await sandbox.close()
        await live.close()
        connection = await asyncpg.connect(settings.postgres_dsn)
        try:
            for schema in (home, other):
                await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await connection.close()


async def test_one_connection_listens_to_every_namespaces_channel(settings: Settings) -> None:
    home, other = (f"test_pool_{uuid.uuid4().hex[:10]}" for _ in range(2))
    pools = [borrow(settings.postgres_dsn, home, schema) for schema in (home, other)]
    heard: dict[str, asyncio.Queue[str]] = {schema: asyncio.Queue() for schema in (home, other)}
    connected = asyncio.Event()

    async def on_connected() -> None:
        connected.set()

    def hearing(schema: str) -> Notify:
        return lambda _connection, _pid, _channel, payload: heard[schema].put_nowait(payload)

    try:
        for schema in (home, other):
            await pools[0].shared.listen(applied_channel(schema), hearing(schema), on_connected)
        await asyncio.wait_for(connected.wait(), 10)
        await asyncio.sleep(0.2)
        assert pools[0].shared is pools[1].shared
        async with pools[1].acquire() as connection:
            for schema in (home, other):
                await connection.execute("SELECT pg_notify($1, $2)", applied_channel(schema), schema)
        for schema in (home, other):
            assert await asyncio.wait_for(heard[schema].get(), 10) == schema
    finally:
        for pool in pools:
            await pool.close()
