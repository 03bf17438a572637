"""The durable projection: current state, full history and stream entries in PostgreSQL.

A batch is one transaction whatever its size, with a fixed number of statements: take the schema's
batch lock (shared: batches never wait for each other, only for a rebuild's schema swap); lock the partition's
checkpoint row (``SELECT ... FOR UPDATE``) and compare it with the expected one; read the current records
of every key and stream the batch touches (and, for those whose record's list of command ids is full, their
command index: accepted history rows or stream entries with the batch's command ids); fold in memory
with `commands.fold.apply`, exactly as the Redis projection does; write the new records with one
multi-row upsert, the history and the stream entries with COPY; move the checkpoint and NOTIFY the
gateways, which deliver the change to watchers once the transaction commits. The checkpoint row is locked
for the whole transaction, so two workers that both think they own a partition cannot interleave: the
second finds the checkpoint moved.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson

from commands.envelope import DELETE, STREAM_APPEND
from commands.fold import Outcome, Record, Remembered, apply, consults_index, remember
from commands.keys import STREAM_MARK, kafka_key, partition_for, stream_key
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
STREAM_COLUMNS = ("partition", "log_offset", "event_id", "tenant", "stream", "actor", "ts", "data", "command_id")
RETRY_COLUMNS = ("partition", "log_offset", "tenant", "stream", "command_id", "ts", "reason", "outcome_version")
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
READ_STREAMS = """
SELECT s.tenant, s.stream AS key, s.count AS value, s.version, s.created_ts, s.updated_ts, NULL::int8 AS expires_at,
       false AS deleted, s.commands
FROM stream_current s JOIN unnest($1::text[], $2::text[]) AS wanted(tenant, stream)
  ON s.tenant = wanted.tenant AND s.stream = wanted.stream
"""
UPSERT_STREAMS = """
INSERT INTO stream_current (tenant, stream, home_partition, count, version, created_ts, updated_ts, commands)
SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::int8[], $5::int8[], $6::int8[], $7::int8[], $8::json[])
ON CONFLICT (tenant, stream) DO UPDATE SET
  home_partition = EXCLUDED.home_partition, count = EXCLUDED.count, version = EXCLUDED.version,
  created_ts = EXCLUDED.created_ts, updated_ts = EXCLUDED.updated_ts, commands = EXCLUDED.commands
"""
# A key's (or stream's) command index, for the command ids asked: its newest accepted command of each id.
LOOKUP_COMMANDS = """
SELECT DISTINCT ON (h.tenant, h.{name}, h.command_id) h.tenant, h.{name} AS key, h.command_id, h.log_offset, h.ts
FROM {table} h JOIN unnest($1::text[], $2::text[], $3::text[]) AS wanted(tenant, name, command_id)
  ON h.tenant = wanted.tenant AND h.{name} = wanted.name AND h.command_id = wanted.command_id
WHERE {accepted}
ORDER BY h.tenant, h.{name}, h.command_id, h.ts DESC, h.log_offset DESC
"""
LOOKUP_KEY_COMMANDS = LOOKUP_COMMANDS.format(name="key", table="kv_history", accepted="h.status = 'accepted'")
LOOKUP_STREAM_COMMANDS = LOOKUP_COMMANDS.format(name="stream", table="stream_entries", accepted="true")
LOCK_CHECKPOINT = "SELECT log_offset FROM checkpoints WHERE projection = $1 AND partition = $2 FOR UPDATE"
CREATE_CHECKPOINT = "INSERT INTO checkpoints VALUES ($1, $2, -1) ON CONFLICT DO NOTHING"
MOVE_CHECKPOINT = """
WITH moved AS (UPDATE checkpoints SET log_offset = $3 WHERE projection = $1 AND partition = $2)
SELECT pg_notify($4, $5)
"""

# (tenant, key); a stream's "key" is its name after the stream mark, which is in no key's grammar.
TenantKey = tuple[str, str]


@functools.lru_cache(maxsize=1 << 16)
def home_partition(tenant: str, key: str, partitions: int) -> int:
    """The partition a key routes to (murmur2 in pure Python is a hot spot of a batch: hot keys are cached)."""
    return partition_for(kafka_key(tenant, key), partitions)


def record_from_row(row: asyncpg.Record) -> Record:
    """A kv_current row (its RECORD_COLUMNS), or a stream_current row (READ_STREAMS), as the fold's record."""
    value = row["value"]
    return Record(
        value=orjson.loads(value) if isinstance(value, bytes) else value,
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
            records = await self._read_records(connection, events)
            index = await self._read_command_index(connection, events, records)
            outcomes, history, touched = self._fold(partition, events, records, index)
            keys = {address: record for address, record in touched.items() if not _is_stream(address)}
            streams = {address: record for address, record in touched.items() if _is_stream(address)}
            if keys:
                await connection.execute(UPSERT_RECORDS, *self._record_columns(keys))
            if streams:
                await connection.execute(UPSERT_STREAMS, *self._stream_columns(streams))
            if history:
                await connection.copy_records_to_table("kv_history", records=history, columns=HISTORY_COLUMNS)
            appends = [(item, outcome) for item, outcome in zip(events, outcomes, strict=True)
                       if item.event.type == STREAM_APPEND and outcome is not None]
            entries = [self._stream_row(partition, item) for item, outcome in appends if outcome.accepted]
            if entries:
                await connection.copy_records_to_table("stream_entries", records=entries, columns=STREAM_COLUMNS)
            retries = [(partition, item.offset, item.event.tenant, item.event.key, item.event.command_id, item.event.ts,
                        outcome.reason, outcome.version) for item, outcome in appends if not outcome.accepted]
            if retries:
                await connection.copy_records_to_table("stream_retries", records=retries, columns=RETRY_COLUMNS)
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
    ) -> dict[TenantKey, Record | None]:
        addresses = list(dict.fromkeys(_address(item) for item in events))
        records: dict[TenantKey, Record | None] = dict.fromkeys(addresses)
        for query, wanted in ((READ_RECORDS, [a for a in addresses if not _is_stream(a)]),
                              (READ_STREAMS, [a for a in addresses if _is_stream(a)])):
            if not wanted:
                continue
            names = [key.removeprefix(STREAM_MARK) for _, key in wanted]
            for row in await connection.fetch(query, [tenant for tenant, _ in wanted], names):
                key = row["key"] if query is READ_RECORDS else STREAM_MARK + row["key"]
                records[(row["tenant"], key)] = record_from_row(row)
        return records

    async def _read_command_index(
        self, connection: asyncpg.Connection, events: Sequence[Positioned], records: dict[TenantKey, Record | None]
    ) -> dict[TenantKey, dict[str, Remembered]]:
        """What the command index of each key with a full list of command ids holds of the batch's ids."""
        index: dict[TenantKey, dict[str, Remembered]] = {}
        wanted = [(address, item.event.command_id) for item in events
                  if item.event.command_id is not None and consults_index(records[address := _address(item)])]
        for query, stream in ((LOOKUP_KEY_COMMANDS, False), (LOOKUP_STREAM_COMMANDS, True)):
            asked = [(address, command_id) for address, command_id in wanted if _is_stream(address) is stream]
            if not asked:
                continue
            rows = await connection.fetch(query, [address[0] for address, _ in asked],
                                          [address[1].removeprefix(STREAM_MARK) for address, _ in asked],
                                          [command_id for _, command_id in asked])
            for row in rows:
                address = (row["tenant"], STREAM_MARK + row["key"] if stream else row["key"])
                index.setdefault(address, {})[row["command_id"]] = (row["command_id"], row["log_offset"], row["ts"])
        return index

    def _fold(
        self, partition: int, events: Sequence[Positioned], records: dict[TenantKey, Record | None],
        index: dict[TenantKey, dict[str, Remembered]],
    ) -> tuple[list[Outcome | None], list[tuple[Any, ...]], dict[TenantKey, Record]]:
        outcomes: list[Outcome | None] = []
        history: list[tuple[Any, ...]] = []
        touched: dict[TenantKey, Record] = {}
        for item in events:
            address = _address(item)
            known = index.setdefault(address, {})
            seen = known.get(item.event.command_id) if item.event.command_id else None
            outcome = apply(records[address], item.event, item.offset, seen)
            outcomes.append(outcome)
            if outcome.accepted and outcome.record is not None:
                records[address] = touched[address] = outcome.record
                remember(known, outcome)
            if item.event.type != STREAM_APPEND:
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
                orjson.dumps(event.data), event.command_id)

    def _stream_columns(self, touched: dict[TenantKey, Record]) -> list[list[Any]]:
        columns: list[list[Any]] = [[] for _ in range(8)]
        for (tenant, marked), record in touched.items():
            stream = marked.removeprefix(STREAM_MARK)
            row = (tenant, stream, partition_for(stream_key(tenant, stream), self.partitions), record.value,
                   record.version, record.created_ts, record.updated_ts, orjson.dumps(record.commands))
            for column, value in zip(columns, row, strict=True):
                column.append(value)
        return columns

    def _record_columns(self, touched: dict[TenantKey, Record]) -> list[list[Any]]:
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


def _address(item: Positioned) -> TenantKey:
    event = item.event
    return (event.tenant, STREAM_MARK + event.key if event.type == STREAM_APPEND else event.key)


def _is_stream(address: TenantKey) -> bool:
    return address[1].startswith(STREAM_MARK)
