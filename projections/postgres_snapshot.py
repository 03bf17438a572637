"""PostgreSQL's current state of one partition, read as one consistent snapshot: how a hot store that
lost its data (Redis after a flush or a restart without persistence) is restored without replaying the
whole log. The snapshot is taken at PostgreSQL's own checkpoint for the partition; the hot store then
replays only the log after it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg

from commands.fold import MAX_REMEMBERED_COMMANDS, Record, Remembered
from commands.keys import STREAM_MARK
from projections.postgres import RECORD_COLUMNS, record_from_row
from projections.postgres_schema import connect

CHUNK = 1000

# Keys of the partition that a hot store still holds: live ones, and dead ones for a while after they
# died (so that conditions and retried commands see them), as `redis_kv.physical_expiry` decides.
RECORDS = f"""
SELECT tenant, key, {RECORD_COLUMNS} FROM kv_current
WHERE home_partition = $1
  AND CASE WHEN deleted THEN updated_ts + $2 > $3
           WHEN expires_at IS NOT NULL THEN expires_at + $2 > $3
           ELSE true END
"""
# The partition's streams, as the fold's records (their "key" is the stream mark and the name).
STREAMS = """
SELECT tenant, $2 || stream AS key, count AS value, version, created_ts, updated_ts, NULL::int8 AS expires_at,
       false AS deleted, commands
FROM stream_current WHERE home_partition = $1
"""
# The command indexes of the partition's keys and streams whose list of command ids is full: the accepted
# commands newer than a cutoff that the record's list let go, oldest first (an index keeps an id's newest).
COMMAND_INDEX = """
SELECT h.tenant, h.key, h.command_id, h.log_offset, h.ts FROM kv_current c
JOIN kv_history h ON h.tenant = c.tenant AND h.key = c.key
WHERE c.home_partition = $1 AND json_array_length(c.commands) >= $2 AND h.status = 'accepted'
  AND h.command_id IS NOT NULL AND h.ts > $3
  AND NOT EXISTS (SELECT 1 FROM json_array_elements(c.commands) kept
                  WHERE kept->>0 = h.command_id AND (kept->>1)::int8 = h.log_offset)
UNION ALL
SELECT e.tenant, $4 || e.stream, e.command_id, e.log_offset, e.ts FROM stream_current s
JOIN stream_entries e ON e.tenant = s.tenant AND e.stream = s.stream
WHERE s.home_partition = $1 AND json_array_length(s.commands) >= $2 AND e.command_id IS NOT NULL AND e.ts > $3
  AND NOT EXISTS (SELECT 1 FROM json_array_elements(s.commands) kept
                  WHERE kept->>0 = e.command_id AND (kept->>1)::int8 = e.log_offset)
ORDER BY ts, log_offset
"""
# Events the fold did not accept, recently enough that a writer may still be waiting for their outcome.
UNACCEPTED = """
SELECT log_offset, ts, status, reason, outcome_version FROM kv_history
WHERE partition = $1 AND status <> 'accepted' AND ts > $2 AND log_offset <= $3
UNION ALL
SELECT log_offset, ts, 'duplicate', reason, outcome_version FROM stream_retries
WHERE partition = $1 AND ts > $2 AND log_offset <= $3
"""


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    tenant: str
    key: str
    record: Record


@dataclass(frozen=True, slots=True)
class UnacceptedOutcome:
    offset: int
    ts: int
    summary: dict[str, Any]  # what a waiting writer reads: status, reason, version


class PartitionSnapshot:
    def __init__(self, connection: asyncpg.Connection, partition: int, checkpoint: int) -> None:
        self._connection, self.partition, self.checkpoint = connection, partition, checkpoint

    async def records(self, retention_ms: int, now: int) -> AsyncIterator[list[SnapshotRecord]]:
        """The partition's key records, then its stream records (whose key is the stream mark and the name)."""
        chunk: list[SnapshotRecord] = []
        for query, args in ((RECORDS, (retention_ms, now)), (STREAMS, (STREAM_MARK,))):
            async for row in self._connection.cursor(query, self.partition, *args, prefetch=CHUNK):
                chunk.append(SnapshotRecord(row["tenant"], row["key"], record_from_row(row)))
                if len(chunk) >= CHUNK:
                    yield chunk
                    chunk = []
        if chunk:
            yield chunk

    async def command_index(self, since: int) -> AsyncIterator[list[tuple[str, str, Remembered]]]:
        """(tenant, key, entry) of every command index entry newer than ``since`` (`commands.fold`)."""
        chunk: list[tuple[str, str, Remembered]] = []
        async for row in self._connection.cursor(COMMAND_INDEX, self.partition, MAX_REMEMBERED_COMMANDS, since,
                                                 STREAM_MARK, prefetch=CHUNK):
            chunk.append((row["tenant"], row["key"], (row["command_id"], row["log_offset"], row["ts"])))
            if len(chunk) >= CHUNK:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    async def unaccepted(self, since: int) -> list[UnacceptedOutcome]:
        rows = await self._connection.fetch(UNACCEPTED, self.partition, since, self.checkpoint)
        return [
            UnacceptedOutcome(row["log_offset"], row["ts"],
                              {"status": row["status"], "reason": row["reason"], "version": row["outcome_version"]})
            for row in rows
        ]


class PostgresSnapshots:
    """Snapshots of the live PostgreSQL projection (``projection``'s checkpoints in ``schema``)."""

    def __init__(self, dsn: str, schema: str, projection: str = "postgres") -> None:
        self.dsn, self.schema, self.projection = dsn, schema, projection

    @contextlib.asynccontextmanager
    async def partition(self, partition: int) -> AsyncIterator[PartitionSnapshot]:
        connection = await connect(self.dsn, self.schema)
        try:
            async with connection.transaction(isolation="repeatable_read", readonly=True):
                checkpoint = await connection.fetchval(
                    "SELECT log_offset FROM checkpoints WHERE projection = $1 AND partition = $2",
                    self.projection, partition)
                yield PartitionSnapshot(connection, partition, -1 if checkpoint is None else checkpoint)
        finally:
            await connection.close()
