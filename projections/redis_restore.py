"""Writing records into the hot projection outside the projector's batches: restoring a partition that Redis
lost from a PostgreSQL snapshot, and re-warming one key that a reader found in PostgreSQL.

Both keep the projector's invariant: a record in Redis is the fold of every event up to the partition's
checkpoint, so the projector can fold the next event onto it.

- A restore runs in the projector, while the partition has no checkpoint (readers do not trust it: its
  ``live`` marker is missing). It writes the snapshot's records, then sets the checkpoint to the
  snapshot's, only if no checkpoint appeared meanwhile.
- A re-warm runs in the gateway, as one script that writes the record only if the partition is live,
  its checkpoint has reached the record's version (so the projector will never fold an event the record
  already contains), and Redis holds no record of that version or newer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
import redis.asyncio as aioredis

from commands.fold import Record
from commands.keys import STREAM_MARK
from projections.postgres_snapshot import PartitionSnapshot
from projections.redis_kv import (
    COMMAND_INDEX_RETENTION_MS,
    DEAD_RECORD_RETENTION_MS,
    OUTCOME_TTL_SECONDS,
    command_index_entry,
    encode_record,
    physical_expiry,
)
from projections.redis_layout import RedisLayout

# KEYS: record, checkpoint, live, index. ARGV: version, pexpireat (0: none), deleted (0/1), key, fields...
WARM_RECORD = """
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
local version = tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[2]) or '-1') < version then return 0 end
local current = redis.call('HGET', KEYS[1], 'version')
if current and tonumber(current) >= version then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
if ARGV[2] ~= '0' then redis.call('PEXPIREAT', KEYS[1], ARGV[2]) end
if ARGV[3] == '1' then redis.call('ZREM', KEYS[4], ARGV[4]) else redis.call('ZADD', KEYS[4], 0, ARGV[4]) end
return 1
"""


async def warm_record(
    client: aioredis.Redis, layout: RedisLayout, home: int, tenant: str, key: str, record: Record, now: int
) -> bool:
    """Put ``record`` (read from PostgreSQL) back into Redis if that is safe; True if it was written."""
    written = await client.eval(  # type: ignore[misc]
        WARM_RECORD, 4,
        layout.record(home, tenant, key), layout.checkpoint(home), layout.live(home), layout.index(home, tenant),
        record.version, physical_expiry(record, now), int(record.deleted), key, *encode_record(record),
    )
    return bool(written)


def _queue_record(pipe: Any, layout: RedisLayout, home: int, tenant: str, key: str, record: Record, now: int) -> None:
    stream = key.startswith(STREAM_MARK)
    name = layout.stream(home, tenant, key[len(STREAM_MARK):]) if stream else layout.record(home, tenant, key)
    pipe.delete(name)
    pipe.hset(name, items=encode_record(record))
    expiry = physical_expiry(record, now)
    if expiry:
        pipe.pexpireat(name, expiry)
    if stream:
        return
    if record.deleted:
        pipe.zrem(layout.index(home, tenant), key)
    else:
        pipe.zadd(layout.index(home, tenant), {key: 0})


async def clear_partition(client: aioredis.Redis, layout: RedisLayout, partition: int) -> int:
    """Delete every key of the partition (records, index, outcomes, checkpoint, marker); return how many."""
    prefix = layout.partition_prefix(partition)
    escaped = "".join(f"\\{char}" if char in "*?[]\\" else char for char in prefix) + "*"
    deleted = 0
    batch: list[Any] = []
    async for name in client.scan_iter(match=escaped, count=1000):
        batch.append(name)
        if len(batch) >= 1000:
            deleted += await client.delete(*batch)
            batch = []
    if batch:
        deleted += await client.delete(*batch)
    return deleted


async def restore_partition(
    client: aioredis.Redis, layout: RedisLayout, snapshot: PartitionSnapshot, now: int
) -> tuple[int, int] | None:
    """Write the snapshot's records, command indexes and recent outcomes, then set the checkpoint to the
    snapshot's.

    Returns (records written, checkpoint), or None if a checkpoint appeared meanwhile (another worker
    owns the partition now), in which case nothing of this restore is trusted by anyone.
    """
    partition, written = snapshot.partition, 0
    async for chunk in snapshot.records(DEAD_RECORD_RETENTION_MS, now):
        async with client.pipeline(transaction=False) as pipe:
            for item in chunk:
                _queue_record(pipe, layout, partition, item.tenant, item.key, item.record, now)
            await pipe.execute()
        written += len(chunk)
    async for entries in snapshot.command_index(now - COMMAND_INDEX_RETENTION_MS):
        async with client.pipeline(transaction=False) as pipe:
            for tenant, key, entry in entries:
                commands, times, command_id, value, ts, _, expiry = command_index_entry(
                    layout, partition, tenant, key, entry, now)
                pipe.hset(commands, command_id, value)
                pipe.zadd(times, {command_id: int(ts)})
                pipe.pexpireat(commands, int(expiry))
                pipe.pexpireat(times, int(expiry))
            await pipe.execute()
    await _restore_outcomes(client, layout, partition, await snapshot.unaccepted(now - OUTCOME_TTL_SECONDS * 1000),
                            now)
    if not await client.set(layout.checkpoint(partition), snapshot.checkpoint, nx=True):
        return None
    return written, snapshot.checkpoint


async def _restore_outcomes(
    client: aioredis.Redis, layout: RedisLayout, partition: int, outcomes: Iterable[Any], now: int
) -> None:
    async with client.pipeline(transaction=False) as pipe:
        for outcome in outcomes:
            remaining = OUTCOME_TTL_SECONDS - (now - outcome.ts) // 1000
            if remaining > 0:
                pipe.set(layout.outcome(partition, outcome.offset), orjson.dumps(outcome.summary), ex=remaining)
        await pipe.execute()
