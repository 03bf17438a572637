"""The hot projection: the current state of every key in Redis, one Lua call per batch.

A batch costs two round trips whatever its size: one pipelined read of the records it touches, then
one script that checks the checkpoint, writes the folded records, the outcomes of rejected events and
the new checkpoint, and announces the applied position.

Records that are dead (deleted or expired) stay in Redis for ``DEAD_RECORD_RETENTION_MS`` after the
projector last touched them, so that conditions and retried commands see the same record here as in
every other projection; readers never show them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import BusyLoadingError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from commands.envelope import STREAM_APPEND, now_ms
from commands.fold import IDEMPOTENCY_WINDOW_MS, Outcome, Record, apply
from commands.keys import kafka_key, partition_for
from projections.redis_layout import RedisLayout
from projections.sink import TRANSIENT, CheckpointMoved, Positioned, ProjectionSink

DEAD_RECORD_RETENTION_MS = IDEMPOTENCY_WINDOW_MS + 3_600_000
OUTCOME_TTL_SECONDS = 600

Address = tuple[int, str, str]  # (partition the key routes to, tenant, key)

# ARGV: expected checkpoint, new checkpoint, channel, partition, then operations:
#   R key nfields field value ... pexpireat   replace a record (pexpireat 0: no expiry)
#   Z+ index member / Z- index member        maintain the tenant's key index
#   O key value seconds                        remember a rejected event's outcome
APPLY_BATCH = """
local current = redis.call('GET', KEYS[1]) or '-1'
if current ~= ARGV[1] then
  return redis.error_reply('CHECKPOINT ' .. current)
end
local i = 5
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'R' then
    local n = tonumber(ARGV[i + 2])
    redis.call('DEL', ARGV[i + 1])
    redis.call('HSET', ARGV[i + 1], unpack(ARGV, i + 3, i + 2 + n))
    if ARGV[i + 3 + n] ~= '0' then
      redis.call('PEXPIREAT', ARGV[i + 1], ARGV[i + 3 + n])
    end
    i = i + 4 + n
  elseif op == 'Z+' then
    redis.call('ZADD', ARGV[i + 1], 0, ARGV[i + 2])
    i = i + 3
  elseif op == 'Z-' then
    redis.call('ZREM', ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  elseif op == 'O' then
    redis.call('SET', ARGV[i + 1], ARGV[i + 2], 'EX', ARGV[i + 3])
    i = i + 4
  else
    return redis.error_reply('unknown operation ' .. tostring(op))
  end
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4] .. ':' .. ARGV[2])
return 'OK'
"""


def encode_record(record: Record) -> list[bytes | str | int]:
    fields: list[bytes | str | int] = [
        "version", record.version, "created", record.created_ts, "updated", record.updated_ts,
        "expires", record.expires_at or 0, "deleted", int(record.deleted),
        "cmds", orjson.dumps(record.commands),
    ]
    if not record.deleted:
        fields += ["value", orjson.dumps(record.value)]
    return fields


def decode_record(fields: dict[bytes, bytes]) -> Record | None:
    if not fields:
        return None
    value = fields.get(b"value")
    return Record(
        value=orjson.loads(value) if value is not None else None,
        version=int(fields[b"version"]),
        created_ts=int(fields[b"created"]),
        updated_ts=int(fields[b"updated"]),
        expires_at=int(fields[b"expires"]) or None,
        deleted=fields.get(b"deleted") == b"1",
        commands=tuple(tuple(entry) for entry in orjson.loads(fields.get(b"cmds", b"[]"))),  # type: ignore[misc]
    )


def physical_expiry(record: Record, now: int) -> int:
    """When Redis may drop the record: never while live without a TTL, else well after it died."""
    if record.deleted:
        return max(record.updated_ts, now) + DEAD_RECORD_RETENTION_MS
    if record.expires_at is not None:
        return max(record.expires_at, now) + DEAD_RECORD_RETENTION_MS
    return 0


class RedisSink(ProjectionSink):
    name = "redis"
    transient_errors = (*TRANSIENT, RedisConnectionError, RedisTimeoutError, BusyLoadingError)

    def __init__(self, redis_url: str, layout: RedisLayout, partitions: int) -> None:
        self.client = aioredis.from_url(redis_url)
        self.layout = layout
        self.partitions = partitions
        self._script = self.client.register_script(APPLY_BATCH)

    async def close(self) -> None:
        await self.client.aclose()

    async def checkpoints(self) -> dict[int, int]:
        keys = [self.layout.checkpoint(partition) for partition in range(self.partitions)]
        values = await self.client.mget(keys)
        return {partition: int(value) for partition, value in enumerate(values) if value is not None}

    async def apply(
        self, partition: int, events: Sequence[Positioned], through: int, expected: int
    ) -> list[Outcome | None]:
        kv_events = [item for item in events if item.event.type != STREAM_APPEND]
        records = await self._read_records(kv_events)
        before = dict(records)
        outcomes: list[Outcome | None] = []
        rejected: list[tuple[int, Outcome]] = []
        touched: dict[Address, Record] = {}
        for item in events:
            if item.event.type == STREAM_APPEND:
                outcomes.append(None)
                continue
            address = self._address(item)
            outcome = apply(records.get(address), item.event, item.offset)
            outcomes.append(outcome)
            if outcome.accepted and outcome.record is not None:
                records[address] = touched[address] = outcome.record
            else:
                rejected.append((item.offset, outcome))
        await self.before_commit(partition, through, before, touched)
        try:
            await self._script(
                keys=[self.layout.checkpoint(partition)],
                args=[expected, through, self.layout.applied_channel, partition,
                      *self._operations(partition, touched, rejected)],
            )
        except ResponseError as error:
            message = str(error)
            if message.startswith("CHECKPOINT "):
                raise CheckpointMoved(partition, expected, int(message.split()[1])) from None
            raise
        return outcomes

    async def before_commit(
        self, partition: int, through: int, before: Mapping[Address, Record | None], after: Mapping[Address, Record]
    ) -> None:
        """Called with a batch's effect (each touched key's record before and after it) before it commits.

        A sink that carries the effect further (the embedder) overrides it; what it does there must be
        harmless to repeat, since a failed commit makes the batch run again.
        """

    def _address(self, item: Positioned) -> Address:
        """The partition a key routes to is where readers look, whichever partition the event came in
        on (events produced by other tools may carry another Kafka key)."""
        tenant, key = item.event.tenant, item.event.key
        return partition_for(kafka_key(tenant, key), self.partitions), tenant, key

    async def _read_records(self, events: Sequence[Positioned]) -> dict[Address, Record | None]:
        addresses = list(dict.fromkeys(self._address(item) for item in events))
        if not addresses:
            return {}
        async with self.client.pipeline(transaction=False) as pipe:
            for address in addresses:
                pipe.hgetall(self.layout.record(*address))
            results = await pipe.execute()
        return {address: decode_record(fields) for address, fields in zip(addresses, results, strict=True)}

    def _operations(
        self, partition: int, touched: dict[Address, Record], rejected: list[tuple[int, Outcome]]
    ) -> list[Any]:
        now = now_ms()
        argv: list[Any] = []
        for (home, tenant, key), record in touched.items():
            fields = encode_record(record)
            argv += ["R", self.layout.record(home, tenant, key), len(fields), *fields, physical_expiry(record, now)]
            argv += ["Z-" if record.deleted else "Z+", self.layout.index(home, tenant), key]
        for offset, outcome in rejected:
            summary = {"status": outcome.status.value, "reason": outcome.reason, "version": outcome.version}
            argv += ["O", self.layout.outcome(partition, offset), orjson.dumps(summary), OUTCOME_TTL_SECONDS]
        return argv
