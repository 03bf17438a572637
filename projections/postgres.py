"""The durable projection: current state, full history and stream entries in PostgreSQL.

A batch is one transaction whatever its size, with a fixed number of statements: take the schema's
batch lock (shared: batches never wait for each other, only for a rebuild's schema swap); lock the partition's
checkpoint row (``SELECT ... FOR UPDATE``) and compare it with the expected one; read the current records
of every key the batch touches in one query; fold in memory with `commands.fold.apply`, exactly as the
Redis projection does; write the new records with one multi-row upsert, the history and the stream
entries with COPY; move the checkpoint and NOTIFY the gateways, which deliver the change to watchers
once the transaction commits. The checkpoint row is locked for the whole transaction, so two workers
that both think they own a partition cannot interleave: the second finds the checkpoint moved.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson

from commands.envelope import DELETE, STREAM_APPEND
from commands.fold import Outcome, Record, apply
from commands.keys import kafka_key, partition_for
from projections.postgres_pool import SchemaPool, borrow
from projections.postgres_schema import BATCH_LOCK_SHARED, applied_channel, create_pool, migrate
from projections.sink import TRANSIENT, CheckpointMoved, Positioned, ProjectionSink

# asyncpg's ways of saying "the server is unreachable, restarting or full": retried, never dead-lettered.
POSTGRES_TRANSIENT: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up, a cancelled statement
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
    asyncpg.exceptions.ConnectionDoesNotExistError,
)
# The only errors an event's own data can cause: PostgreSQL's data exceptions (SQLSTATE class 22, e.g. a
# number out of range) and integrity violations (class 23), and values asyncpg cannot encode.
EVENT_DATA_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.IntegrityConstraintViolationError,
    asyncpg.exceptions._base.DataError,
)


class PostgresUnavailable(ConnectionError):
    """Applying a batch failed for a reason other than the events' data: PostgreSQL went away mid-batch
    (asyncpg then reports anything from a lost connection to an internal state error), or the projection
    itself is broken. Retried until it succeeds: skipping the batch would lose acknowledged events."""


# What `PostgresSink.apply` raises unchanged; it turns any other error into PostgresUnavailable.
RAISED_AS_THEY_ARE: tuple[type[BaseException], ...] = (
    CheckpointMoved, *TRANSIENT, *POSTGRES_TRANSIENT, *EVENT_DATA_ERRORS)
NOTIFY_PAYLOAD_LIMIT = 7000  # PostgreSQL refuses payloads of 8000 bytes or more

HISTORY_COLUMNS = ("partition", "log_offset", "event_id", "type", "tenant", "key", "actor", "command_id", "ts",
                   "data", "status", "reason", "outcome_version", "version", "value", "deleted", "expires_at")
STREAM_COLUMNS = ("partition", "log_offset", "event_id", "tenant", "stream", "actor", "ts", "data")
RECORD_COLUMNS = "value, version, created_ts, updated_ts, expires_at, deleted, commands"

READ_RECORDS = f"""
SELECT c.tenant, c.key, {RECORD_COLUMNS}
FROM kv_current c JOIN unnest($1::text[], $2::text[]) AS wanted(tenant, key)
  ON c.tenant = wanted.tenant AND c.key = wanted.key
"""
UPSERT_RECORDS = """
INSERT INTO kv_current (tenant, key, home_partition, value, version, created_ts, updated_ts, expires_at, deleted,
                        commands)
SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::json[], $5::int8[], $6::int8[], $7::int8[],
                     $8::int8[], $9::bool[], $10::json[])
ON CONFLICT (tenant, key) DO UPDATE SET
  home_partition = EXCLUDED.home_partition, value = EXCLUDED.value, version = EXCLUDED.version,
  created_ts = EXCLUDED.created_ts, updated_ts = EXCLUDED.updated_ts, expires_at = EXCLUDED.expires_at,
  deleted = EXCLUDED.deleted, commands = EXCLUDED.commands
"""
LOCK_CHECKPOINT = "SELECT log_offset FROM checkpoints WHERE projection = $1 AND partition = $2 FOR UPDATE"
CREATE_CHECKPOINT = "INSERT INTO checkpoints VALUES ($1, $2, -1) ON CONFLICT DO NOTHING"
MOVE_CHECKPOINT = """
WITH moved AS (UPDATE checkpoints SET log_offset = $3 WHERE projection = $1 AND partition = $2)
SELECT pg_notify($4, $5)
"""

Address = tuple[str, str]  # (tenant, key)


@functools.lru_cache(maxsize=1 << 16)
def home_partition(tenant: str, key: str, partitions: int) -> int:
    """The partition a key routes to (murmur2 in pure Python is a hot spot of a batch: hot keys are cached)."""
    return partition_for(kafka_key(tenant, key), partitions)


def record_from_row(row: asyncpg.Record) -> Record:
    """A kv_current row (its RECORD_COLUMNS) as the fold's record."""
    return Record(
        value=orjson.loads(row["value"]) if row["value"] is not None else None,
        version=row["version"],
        created_ts=row["created_ts"],
        updated_ts=row["updated_ts"],
        expires_at=row["expires_at"],
        deleted=row["deleted"],
        commands=tuple(tuple(entry) for entry in orjson.loads(row["commands"])),  # type: ignore[misc]
    )


def notify_payload(partition: int, through: int, tenants: set[str]) -> str:
    """``{"p": partition, "o": offset, "t": [tenants]}``; ``"t": null`` (anyone) when the list is too long."""
    payload = orjson.dumps({"p": partition, "o": through, "t": sorted(tenants)})
    if len(payload) > NOTIFY_PAYLOAD_LIMIT:
        payload = orjson.dumps({"p": partition, "o": through, "t": None})
    return payload.decode()


class PostgresSink(ProjectionSink):
    name = "postgres"
    transient_errors = (*TRANSIENT, *POSTGRES_TRANSIENT)

    def __init__(self, dsn: str, schema: str, partitions: int, *, projection: str = "postgres",
                 home: str | None = None) -> None:
        """``home``: borrow connections from the process's pool whose connections see that schema (a sandbox's
        sink borrows the live schema's) instead of opening a pool of its own (`projections.postgres_pool`)."""
        self.dsn, self.schema, self.partitions, self.projection = dsn, schema, partitions, projection
        self.home = home
        self._pool: asyncpg.Pool | SchemaPool | None = None

    async def start(self) -> None:
        await self.pool()

    async def drop(self) -> int:
        """A dropped sandbox: its whole schema goes."""
        connection = await asyncpg.connect(self.dsn)
        try:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            await connection.close()
        return 1

    async def pool(self) -> asyncpg.Pool | SchemaPool:
        """The connection pool, created (and the schema migrated) on first use, so that a PostgreSQL that
        is down when the worker starts is retried like any other outage."""
        if self._pool is None:
            pool: asyncpg.Pool | SchemaPool
            if self.home is None:
                pool = await create_pool(self.dsn, self.schema, min_size=1, max_size=2)
            else:
                pool = borrow(self.dsn, self.home, self.schema, max_size=4)
            try:
                async with pool.acquire() as connection:
                    await migrate(connection, self.schema)
            except BaseException:
                await pool.close()
                raise
            self._pool = pool
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def checkpoints(self) -> dict[int, int]:
        rows = await (await self.pool()).fetch(
            "SELECT partition, log_offset FROM checkpoints WHERE projection = $1 AND log_offset >= 0", self.projection
        )
        return {row["partition"]: row["log_offset"] for row in rows}

    async def apply(
        self, partition: int, events: Sequence[Positioned], through: int, expected: int
    ) -> list[Outcome | None]:
        try:
            return await self._apply_batch(partition, events, through, expected)
        except RAISED_AS_THEY_ARE:
            raise
        except Exception as error:
            raise PostgresUnavailable(
                f"PostgreSQL could not apply partition {partition} up to offset {through} ({error!r}); if this "
                "persists while PostgreSQL is up, the projection or its schema is broken"
            ) from error

    async def _apply_batch(
        self, partition: int, events: Sequence[Positioned], through: int, expected: int
    ) -> list[Outcome | None]:
        async with (await self.pool()).acquire() as connection, connection.transaction():
            # First, before any table is named: a schema swap waits for this batch, or this batch for it
            # (and then finds the new schema under the same name).
            await connection.execute(BATCH_LOCK_SHARED, self.schema)
            found = await self._lock_checkpoint(connection, partition)
            if found != expected:
                raise CheckpointMoved(partition, expected, found)
            kv_events = [item for item in events if item.event.type != STREAM_APPEND]
            records = await self._read_records(connection, kv_events)
            outcomes, history, touched = self._fold(partition, events, records)
            if touched:
                await connection.execute(UPSERT_RECORDS, *self._record_columns(touched))
            if history:
                await connection.copy_records_to_table("kv_history", records=history, columns=HISTORY_COLUMNS)
            entries = [self._stream_row(partition, item) for item in events if item.event.type == STREAM_APPEND]
            if entries:
                await connection.copy_records_to_table("stream_entries", records=entries, columns=STREAM_COLUMNS)
            tenants = {item.event.tenant for item in events}
            await connection.execute(MOVE_CHECKPOINT, self.projection, partition, through,
                                     applied_channel(self.schema), notify_payload(partition, through, tenants))
        return outcomes

    async def _lock_checkpoint(self, connection: asyncpg.Connection, partition: int) -> int:
        found = await connection.fetchval(LOCK_CHECKPOINT, self.projection, partition)
        if found is None:  # the partition's first batch: create the row, then lock it like any other
            await connection.execute(CREATE_CHECKPOINT, self.projection, partition)
            found = await connection.fetchval(LOCK_CHECKPOINT, self.projection, partition)
        return int(found)

    async def _read_records(
        self, connection: asyncpg.Connection, events: Sequence[Positioned]
    ) -> dict[Address, Record | None]:
        addresses = list(dict.fromkeys((item.event.tenant, item.event.key) for item in events))
        if not addresses:
            return {}
        rows = await connection.fetch(READ_RECORDS, [tenant for tenant, _ in addresses], [key for _, key in addresses])
        records: dict[Address, Record | None] = dict.fromkeys(addresses)
        for row in rows:
            records[(row["tenant"], row["key"])] = record_from_row(row)
        return records

    def _fold(
        self, partition: int, events: Sequence[Positioned], records: dict[Address, Record | None]
    ) -> tuple[list[Outcome | None], list[tuple[Any, ...]], dict[Address, Record]]:
        outcomes: list[Outcome | None] = []
        history: list[tuple[Any, ...]] = []
        touched: dict[Address, Record] = {}
        for item in events:
            if item.event.type == STREAM_APPEND:
                outcomes.append(None)
                continue
            address = (item.event.tenant, item.event.key)
            outcome = apply(records[address], item.event, item.offset)
            outcomes.append(outcome)
            if outcome.accepted and outcome.record is not None:
                records[address] = touched[address] = outcome.record
            history.append(self._history_row(partition, item, outcome))
        return outcomes, history, touched

    @staticmethod
    def _history_row(partition: int, item: Positioned, outcome: Outcome) -> tuple[Any, ...]:
        event, after = item.event, outcome.record
        live_value = after is not None and not after.deleted
        return (
            partition, item.offset, event.id, event.type, event.tenant, event.key, event.actor, event.command_id,
            event.ts, orjson.dumps(event.data) if event.type != DELETE else None,
            outcome.status.value, outcome.reason, outcome.version,
            after.version if after is not None else None,
            orjson.dumps(after.value) if live_value and after is not None else None,
            bool(after is not None and after.deleted),
            after.expires_at if after is not None else None,
        )

    @staticmethod
    def _stream_row(partition: int, item: Positioned) -> tuple[Any, ...]:
        event = item.event
        return (partition, item.offset, event.id, event.tenant, event.key, event.actor, event.ts,
                orjson.dumps(event.data))

    def _record_columns(self, touched: dict[Address, Record]) -> list[list[Any]]:
        columns: list[list[Any]] = [[] for _ in range(10)]
        for (tenant, key), record in touched.items():
            row = (
                tenant, key, home_partition(tenant, key, self.partitions),
                None if record.deleted else orjson.dumps(record.value), record.version, record.created_ts,
                record.updated_ts, record.expires_at, record.deleted, orjson.dumps(record.commands),
            )
            for column, value in zip(columns, row, strict=True):
                column.append(value)
        return columns
