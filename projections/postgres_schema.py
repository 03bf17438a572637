"""The durable projection's schema, created and migrated by AMS itself, and how to connect to it.

Migrations are numbered and applied in order, each once, inside one transaction that holds an advisory
lock on the schema's name: the projector and every gateway run `migrate` at start, and whichever comes
first does the work while the others wait and then find nothing left to do. A schema name is the whole
namespace of a projection (the live one is ``ams``), so a test, a rebuild or a sandbox uses its own.

JSON columns use the ``json`` type with an identity codec: a value goes in as the exact bytes orjson
produced and comes back as those bytes, so a read returns the value exactly as it was written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import asyncpg

SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "checkpoints, current state, history and streams", """
        CREATE TABLE checkpoints (
            projection text NOT NULL,
            partition integer NOT NULL,
            log_offset bigint NOT NULL,
            PRIMARY KEY (projection, partition)
        );

        -- One row per key ever written; deleted keys stay as tombstones, as in Redis, so that
        -- conditions and retried commands see the same record in every projection.
        CREATE TABLE kv_current (
            tenant text COLLATE "C" NOT NULL,
            key text COLLATE "C" NOT NULL,
            home_partition integer NOT NULL,  -- the partition the key routes to (where Redis keeps it)
            value json,                       -- NULL for a tombstone
            version bigint NOT NULL,
            created_ts bigint NOT NULL,
            updated_ts bigint NOT NULL,
            expires_at bigint,
            deleted boolean NOT NULL,
            commands json NOT NULL,           -- recent [command id, version, ts] triples, newest last
            PRIMARY KEY (tenant, key)
        );
        CREATE INDEX kv_current_home_partition ON kv_current (home_partition);

        -- Every key-value event with its outcome and the key's state after it (value, version, ...).
        CREATE TABLE kv_history (
            partition integer NOT NULL,
            log_offset bigint NOT NULL,
            event_id text NOT NULL,
            type text NOT NULL,
            tenant text COLLATE "C" NOT NULL,
            key text COLLATE "C" NOT NULL,
            actor text NOT NULL,
            command_id text,
            ts bigint NOT NULL,
            data json,
            status text NOT NULL CHECK (status IN ('accepted', 'rejected', 'duplicate')),
            reason text NOT NULL,
            outcome_version bigint,  -- accepted: the new version; duplicate: the original's; rejected: NULL
            version bigint,          -- the key's version after the event; NULL while it was never written
            value json,
            deleted boolean NOT NULL,
            expires_at bigint,
            PRIMARY KEY (partition, log_offset)
        );
        CREATE INDEX kv_history_key ON kv_history (tenant, key, log_offset, partition);
        CREATE INDEX kv_history_feed ON kv_history (tenant, partition, log_offset);
        CREATE INDEX kv_history_unaccepted ON kv_history (partition, ts) WHERE status <> 'accepted';

        CREATE TABLE stream_entries (
            partition integer NOT NULL,
            log_offset bigint NOT NULL,
            event_id text NOT NULL,
            tenant text COLLATE "C" NOT NULL,
            stream text COLLATE "C" NOT NULL,
            actor text NOT NULL,
            ts bigint NOT NULL,
            data json,
            PRIMARY KEY (partition, log_offset)
        );
        CREATE INDEX stream_entries_stream ON stream_entries (tenant, stream, partition, log_offset);
        CREATE INDEX stream_entries_feed ON stream_entries (tenant, partition, log_offset);
    """),
    Migration(2, "command indexes and stream records: retries are duplicates however late they come", """
        -- A key's command ids that its record's list let go are its accepted history rows (commands/fold.py).
        CREATE INDEX kv_history_command ON kv_history (tenant, key, command_id)
            WHERE status = 'accepted' AND command_id IS NOT NULL;

        -- A stream's record (the fold's: count of observations, last version, recent command ids), so that
        -- a retried append is a duplicate; only accepted appends become stream entries.
        CREATE TABLE stream_current (
            tenant text COLLATE "C" NOT NULL,
            stream text COLLATE "C" NOT NULL,
            home_partition integer NOT NULL,  -- the partition the stream routes to (where Redis keeps it)
            count bigint NOT NULL,
            version bigint NOT NULL,
            created_ts bigint NOT NULL,
            updated_ts bigint NOT NULL,
            commands json NOT NULL,
            PRIMARY KEY (tenant, stream)
        );
        CREATE INDEX stream_current_home_partition ON stream_current (home_partition);
        ALTER TABLE stream_entries ADD COLUMN command_id text;
        CREATE INDEX stream_entries_command ON stream_entries (tenant, stream, command_id)
            WHERE command_id IS NOT NULL;

        -- Appends the fold found to be retries, with the original's version: what a writer waiting on one
        -- is told, kept so that a hot store restored from here can still tell it (kv_history does this
        -- for key-value events).
        CREATE TABLE stream_retries (
            partition integer NOT NULL,
            log_offset bigint NOT NULL,
            tenant text COLLATE "C" NOT NULL,
            stream text COLLATE "C" NOT NULL,
            command_id text NOT NULL,
            ts bigint NOT NULL,
            reason text NOT NULL,
            outcome_version bigint NOT NULL,
            PRIMARY KEY (partition, log_offset)
        );
    """),
)


def check_schema(schema: str) -> str:
    if not SCHEMA_NAME.fullmatch(schema):
        raise ValueError(
            f"PostgreSQL schema {schema!r} must be 1 to 63 characters from a-z 0-9 _, not starting with a digit "
            "(set AMS_POSTGRES_SCHEMA)"
        )
    return schema


# Every batch of the projector holds this lock on its schema, shared, for its whole transaction; a rebuild
# takes it exclusively to swap schemas between two batches (see replay/rebuild_postgres.py).
BATCH_LOCK_SHARED = "SELECT pg_advisory_xact_lock_shared(hashtext('ams.batches'), hashtext($1))"
BATCH_LOCK_EXCLUSIVE = "SELECT pg_advisory_lock(hashtext('ams.batches'), hashtext($1))"
BATCH_UNLOCK = "SELECT pg_advisory_unlock(hashtext('ams.batches'), hashtext($1))"


def applied_channel(schema: str) -> str:
    """The NOTIFY channel on which the projector announces every applied batch of ``schema``."""
    return f"{schema}_applied"


async def _init_connection(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec(
        "json", schema="pg_catalog", encoder=bytes, decoder=bytes, format="binary"
    )


async def create_pool(dsn: str, schema: str, *, min_size: int = 1, max_size: int = 4) -> asyncpg.Pool:
    """A pool whose connections see ``schema`` first and exchange JSON as raw bytes."""
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection,
        server_settings={"search_path": check_schema(schema), "application_name": "ams"},
    )
    assert pool is not None
    return pool


async def connect(dsn: str, schema: str) -> asyncpg.Connection:
    """One connection configured like the pool's (for LISTEN, or a long snapshot transaction)."""
    connection = await asyncpg.connect(
        dsn, server_settings={"search_path": check_schema(schema), "application_name": "ams"})
    await _init_connection(connection)
    return connection


async def migrate(connection: asyncpg.Connection, schema: str) -> list[int]:
    """Apply the migrations ``schema`` lacks, in order; return the versions applied by this call."""
    check_schema(schema)
    if await _up_to_date(connection, schema):
        return []  # no DDL: a reader (the gateway may only SELECT) gets here once the projection has migrated
    # The lock is taken before the transaction: a transaction that waited for it inside could still see the
    # catalog as it was before the waiting (a schema another process just created would seem absent, and
    # CREATE SCHEMA IF NOT EXISTS would fail on it); a transaction begun after the wait sees it.
    lock = f"ams.migrate.{schema}"
    await connection.execute("SELECT pg_advisory_lock(hashtext($1))", lock)
    try:
        return await _migrate_locked(connection, schema)
    finally:
        await connection.execute("SELECT pg_advisory_unlock(hashtext($1))", lock)


async def _up_to_date(connection: asyncpg.Connection, schema: str) -> bool:
    """Whether ``schema`` has every migration already, found by reading alone."""
    if not await connection.fetchval("SELECT to_regclass($1) IS NOT NULL", f'"{schema}".schema_migrations'):
        return False
    done = {row["version"] for row in await connection.fetch(f'SELECT version FROM "{schema}".schema_migrations')}
    return {migration.version for migration in MIGRATIONS} <= done


async def _migrate_locked(connection: asyncpg.Connection, schema: str) -> list[int]:
    applied: list[int] = []
    async with connection.transaction():
        await connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await connection.execute(f'SET LOCAL search_path TO "{schema}"')
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["version"] for row in await connection.fetch("SELECT version FROM schema_migrations")}
        for migration in MIGRATIONS:
            if migration.version in done:
                continue
            await connection.execute(migration.sql)
            await connection.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", migration.version, migration.name
            )
            applied.append(migration.version)
    return applied
