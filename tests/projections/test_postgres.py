"""The PostgreSQL sink honours the sink contract, and records history and streams in the same transaction."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest

from ams.settings import get_settings
from commands.envelope import PATCH, PUT, STREAM_APPEND, Event, now_ms
from commands.fold import visible
from projections.postgres import EVENT_DATA_ERRORS, PostgresSink, PostgresUnavailable, record_from_row
from projections.postgres_schema import MIGRATIONS, create_pool, migrate
from projections.sink import Positioned, ProjectionSink
from tests.projections.sink_contract import SinkContract

pytestmark = pytest.mark.stack


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    """A schema of its own: the contract's checkpoints and rows never touch the live projection's."""
    name = f"test_{uuid.uuid4().hex[:10]}"
    yield name
    connection = await asyncpg.connect(get_settings().postgres_dsn)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await connection.close()


class TestPostgresSink(SinkContract):
    @pytest.fixture(autouse=True)
    async def _schemas(self) -> AsyncIterator[None]:
        """Each sink made gets a schema of its own (the contract makes several per test: each must start
        empty), all dropped afterwards."""
        self.schemas: list[str] = []
        yield
        connection = await asyncpg.connect(get_settings().postgres_dsn)
        try:
            for name in self.schemas:
                await connection.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await connection.close()

    async def make_sink(self) -> ProjectionSink:
        settings = get_settings()
        self.schemas.append(f"test_{uuid.uuid4().hex[:10]}")
        return PostgresSink(settings.postgres_dsn, self.schemas[-1], settings.partitions)

    async def read(self, sink: ProjectionSink, tenant: str, key: str) -> dict[str, Any] | None:
        assert isinstance(sink, PostgresSink)
        async with (await sink.pool()).acquire() as connection:
            row = await connection.fetchrow("SELECT * FROM kv_current WHERE tenant = $1 AND key = $2", tenant, key)
        record = visible(record_from_row(row), now_ms()) if row is not None else None
        return {"value": record.value, "version": record.version} if record is not None else None


async def test_history_and_stream_entries_are_written_with_the_batch(schema: str, tenant: str) -> None:
    settings = get_settings()
    sink = PostgresSink(settings.postgres_dsn, schema, settings.partitions)
    await sink.start()
    try:
        ts = now_ms()
        events = [
            Positioned(Event(PUT, tenant, "doc", {"a": 1, "b": {"c": 2}}, id="e0", ts=ts, actor="agent-1"), 10),
            Positioned(Event(STREAM_APPEND, tenant, "obs", {"seen": "x"}, id="e1", ts=ts, actor="agent-1"), 11),
            Positioned(Event(PATCH, tenant, "doc", {"b": {"c": None}}, id="e2", ts=ts + 1, actor="agent-2"), 12),
            Positioned(Event(PUT, tenant, "doc", 7, id="e3", ts=ts + 2, if_version=10), 13),  # loses: doc is at 12
        ]
        await sink.apply(0, events, through=13, expected=-1)
        pool = await sink.pool()
        history = await pool.fetch("SELECT * FROM kv_history WHERE tenant = $1 ORDER BY log_offset", tenant)
        assert [(row["log_offset"], row["type"], row["status"], row["version"]) for row in history] == [
            (10, PUT, "accepted", 10), (12, PATCH, "accepted", 12), (13, PUT, "rejected", 12)]
        assert orjson.loads(history[1]["value"]) == {"a": 1, "b": {}}
        assert orjson.loads(history[1]["data"]) == {"b": {"c": None}}
        assert history[1]["actor"] == "agent-2"
        assert history[2]["reason"] == "key is at version 12; the write required version 10"
        assert history[2]["value"] == history[1]["value"]  # a rejected event leaves the state as it was
        entries = await pool.fetch("SELECT * FROM stream_entries WHERE tenant = $1", tenant)
        assert [(row["stream"], row["log_offset"], orjson.loads(row["data"])) for row in entries] == [
            ("obs", 11, {"seen": "x"})]
    finally:
        await sink.close()


async def test_values_come_back_as_the_exact_bytes_written(schema: str, tenant: str) -> None:
    settings = get_settings()
    sink = PostgresSink(settings.postgres_dsn, schema, settings.partitions)
    await sink.start()
    try:
        value = {"z": 1, "a": [1.5, "é", None, {"y": True}], "big": 2**62}
        await sink.apply(0, [Positioned(Event(PUT, tenant, "k", value, ts=now_ms()), 0)], through=0, expected=-1)
        async with (await sink.pool()).acquire() as connection:
            stored = await connection.fetchval("SELECT value FROM kv_current WHERE tenant = $1 AND key = 'k'", tenant)
        assert stored == orjson.dumps(value)
    finally:
        await sink.close()


async def test_migrations_run_once_and_are_recorded(schema: str) -> None:
    pool = await create_pool(get_settings().postgres_dsn, schema)
    try:
        async with pool.acquire() as connection:
            assert await migrate(connection, schema) == [migration.version for migration in MIGRATIONS]
            assert await migrate(connection, schema) == []
            recorded = await connection.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [row["version"] for row in recorded] == [migration.version for migration in MIGRATIONS]
    finally:
        await pool.close()


async def test_an_event_postgres_cannot_store_is_raised_as_such_and_changes_nothing(schema: str, tenant: str) -> None:
    """A value out of PostgreSQL's range is the event's fault: the projector may dead-letter it."""
    settings = get_settings()
    sink = PostgresSink(settings.postgres_dsn, schema, settings.partitions)
    await sink.start()
    try:
        overflowing = Event(PUT, tenant, "k", 1, ts=2**63 - 10, ttl_ms=100)  # its expiry exceeds bigint
        with pytest.raises(EVENT_DATA_ERRORS):
            await sink.apply(0, [Positioned(overflowing, 0)], through=0, expected=-1)
        assert await sink.checkpoints() == {}
    finally:
        await sink.close()


async def test_a_broken_projection_is_retried_not_blamed_on_the_events(schema: str, tenant: str) -> None:
    """Any other failure (here a missing table) must never be taken for a poison event and skipped."""
    settings = get_settings()
    sink = PostgresSink(settings.postgres_dsn, schema, settings.partitions)
    await sink.start()
    try:
        async with (await sink.pool()).acquire() as connection:
            await connection.execute("DROP TABLE kv_history")
        with pytest.raises(PostgresUnavailable) as raised:
            await sink.apply(0, [Positioned(Event(PUT, tenant, "k", 1, ts=now_ms()), 0)], through=0, expected=-1)
        assert isinstance(raised.value, sink.transient_errors)
        assert "kv_history" in str(raised.value)
    finally:
        await sink.close()
