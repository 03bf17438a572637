"""The hot projection: the current state of every key in Redis, one Lua call per batch.

A batch costs two round trips whatever its size: one pipelined read of the records it touches, then
one script that checks the checkpoint, writes the folded records, the outcomes of rejected events and
the new checkpoint, and announces the applied position with the keys the batch changed (`redis_layout.
Announcement`: gateways wait on the position, and evict the keys from their hot-key caches).

A key's command ids that its record let go (`commands.fold`) are kept in its command index, written by
the same script; a stream has a record of its own, so that a retried append is a duplicate.

Records that are dead (deleted or expired) stay in Redis for ``DEAD_RECORD_RETENTION_MS`` after the
projector last touched them, so that conditions and retried commands see the same record here as in
every other projection; readers never show them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import orjson
import redis.asyncio as aioredis
from redis.exceptions import BusyLoadingError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from commands.envelope import STREAM_APPEND, now_ms
from commands.fold import IDEMPOTENCY_WINDOW_MS, Outcome, Record, Remembered, apply, consults_index, remember
from commands.keys import STREAM_MARK, kafka_key, partition_for, stream_key
from projections.redis_layout import Announcement, RedisLayout
from projections.sink import NO_CHECKPOINT, TRANSIENT, CheckpointMoved, Positioned, ProjectionSink

log = logging.getLogger("ams.projector")

DEAD_RECORD_RETENTION_MS = IDEMPOTENCY_WINDOW_MS + 3_600_000
# A command index keeps entries this long (event time) after the key's newest one, and Redis drops an index
# idle this long; either way an entry left only when no event within the window can ask for it.
COMMAND_INDEX_RETENTION_MS = 2 * IDEMPOTENCY_WINDOW_MS
OUTCOME_TTL_SECONDS = 600
# Records this writer wrote, so the next batch need not read them back (see RecordCache).
CACHE_RECORDS = 200_000
CACHE_SECONDS = 600.0
# A rebuild writes what it folded once this many records are waiting (and when caught up): a bound on its
# memory, large enough that most keys are written once.
UNWRITTEN_RECORDS = 50_000

# (partition the key routes to, tenant, key); a stream's "key" is its name after the stream mark, which is
# in no key's grammar, so a stream and a key of the same name are different records.
Address = tuple[int, str, str]

# KEYS: the partition's checkpoint (in the writer's generation), the partition's generation pointer.
# ARGV: expected checkpoint, new checkpoint, channel, partition, writer's generation, then four JSON arrays
# (one argument each, decoded by Redis's cjson in C: packing thousands of separate arguments is slow):
#   records   [[key, pexpireat, field, value, ...], ...]   replace each record (pexpireat "0": no expiry)
#   index     [[index key, op, member, ...], ...]          op "+" adds the members to a tenant's key index,
#                                                          "-" removes them
#   outcomes  [[key, value, seconds], ...]                 remember rejected events' outcomes
#   forgotten [[hash, times, id, "version:ts", ts, cutoff, pexpireat], ...]
#                                                          add a command id to a key's command index, drop
#                                                          entries older than cutoff, expire it when idle
# Every number travels as a string: Lua would print a large one in exponent form.
# A writer of a generation older than the pointer's has been retired by a rebuild: it must not write.
GUARD = """
local live = redis.call('GET', KEYS[2]) or '0'
if tonumber(live) > tonumber(ARGV[5]) then
  return redis.error_reply('GENERATION ' .. live)
end
local current = redis.call('GET', KEYS[1]) or '-1'
if current ~= ARGV[1] then
  return redis.error_reply('CHECKPOINT ' .. current)
end
"""
# Keys are deleted and index members added or removed many to a call (a call costs more than a key).
WRITE = """
local records = cjson.decode(ARGV[6])
local names = {}
for i, record in ipairs(records) do
  names[i] = record[1]
end
for i = 1, #names, 1000 do
  redis.call('DEL', unpack(names, i, math.min(i + 999, #names)))
end
for _, record in ipairs(records) do
  redis.call('HSET', record[1], unpack(record, 3))
  if record[2] ~= '0' then
    redis.call('PEXPIREAT', record[1], record[2])
  end
end
for _, entry in ipairs(cjson.decode(ARGV[7])) do
  for i = 3, #entry, 1000 do
    local last = math.min(i + 999, #entry)
    if entry[2] == '+' then
      local scored = {}
      for j = i, last do
        scored[#scored + 1] = 0
        scored[#scored + 1] = entry[j]
      end
      redis.call('ZADD', entry[1], unpack(scored))
    else
      redis.call('ZREM', entry[1], unpack(entry, i, last))
    end
  end
end
for _, outcome in ipairs(cjson.decode(ARGV[8])) do
  redis.call('SET', outcome[1], outcome[2], 'EX', outcome[3])
end
for _, entry in ipairs(cjson.decode(ARGV[9])) do
  redis.call('HSET', entry[1], entry[3], entry[4])
  redis.call('ZADD', entry[2], entry[5], entry[3])
  local old = redis.call('ZRANGEBYSCORE', entry[2], '-inf', '(' .. entry[6], 'LIMIT', 0, 100)
  if #old > 0 then
    redis.call('HDEL', entry[1], unpack(old))
    redis.call('ZREM', entry[2], unpack(old))
  end
  redis.call('PEXPIREAT', entry[1], entry[7])
  redis.call('PEXPIREAT', entry[2], entry[7])
end
"""
# ARGV[10]: the lines naming the keys the batch changed, appended to the announcement (`Announcement`).
APPLY_BATCH = GUARD + WRITE + """
redis.call('SET', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[5] .. ':' .. ARGV[4] .. ':' .. ARGV[2] .. ':' .. ARGV[1] .. ARGV[10])
return 'OK'
"""

# A part of a batch too big for one call, which would block Redis's readers for long (only a rebuild,
# whose generation nobody reads yet, writes one). KEYS[3] marks the partition "unfinished" at the
# expected checkpoint: until the batch's last part (APPLY_BATCH) moves the checkpoint, the partition holds
# records from beyond it, and a resumed rebuild starts that partition over (see `checkpoints`).
APPLY_PART = GUARD + "redis.call('SET', KEYS[3], ARGV[1])" + WRITE + "return 'OK'"
PART_RECORDS = 2_000  # records per call: a few milliseconds of Redis's time


def encode_record(record: Record) -> list[str]:
    fields = [
        "version", str(record.version), "created", str(record.created_ts), "updated", str(record.updated_ts),
        "expires", str(record.expires_at or 0), "deleted", "1" if record.deleted else "0",
        "cmds", orjson.dumps(record.commands).decode(),
    ]
    if not record.deleted:
        fields += ["value", orjson.dumps(record.value).decode()]
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


def decode_remembered(command_id: str, raw: bytes) -> Remembered:
    version, _, ts = raw.decode().partition(":")
    return (command_id, int(version), int(ts))


def command_index_entry(layout: RedisLayout, home: int, tenant: str, key: str, entry: Remembered,
                        now: int) -> list[str]:
    """One ``forgotten`` operation of APPLY_BATCH (also how a restore rebuilds an index from PostgreSQL)."""
    command_id, version, ts = entry
    return [layout.commands(home, tenant, key), layout.command_times(home, tenant, key), command_id,
            f"{version}:{ts}", str(ts), str(ts - COMMAND_INDEX_RETENTION_MS),
            str(max(ts, now) + COMMAND_INDEX_RETENTION_MS)]


def physical_expiry(record: Record, now: int) -> int:
    """When Redis may drop the record: never while live without a TTL, else well after it died."""
    if record.deleted:
        return max(record.updated_ts, now) + DEAD_RECORD_RETENTION_MS
    if record.expires_at is not None:
        return max(record.expires_at, now) + DEAD_RECORD_RETENTION_MS
    return 0


class RecordCache:
    """The records this sink wrote last, so a batch reads from Redis only the keys it has not seen.

    Safe because the sink is the only writer of its partitions while its checkpoint matches: any other
    writer moves the checkpoint, the next batch is refused, and the cache is cleared. Entries expire after
    ``CACHE_SECONDS``, well before Redis may drop a dead record physically.
    """

    def __init__(self, size: int = CACHE_RECORDS, seconds: float = CACHE_SECONDS) -> None:
        self.size, self.seconds = size, seconds
        self._entries: OrderedDict[Address, tuple[float, Record | None]] = OrderedDict()
        # True while the cache holds everything the store holds (a rebuild filling an empty generation):
        # then a key the cache has never seen is absent, with no need to ask Redis.
        self.complete = False

    def get(self, address: Address) -> tuple[bool, Record | None]:
        entry = self._entries.get(address)
        if entry is None:
            return self.complete, None
        if time.monotonic() - entry[0] > self.seconds and not self.complete:
            return False, None
        self._entries.move_to_end(address)
        return True, entry[1]

    def put_many(self, records: Iterable[tuple[Address, Record | None]]) -> None:
        now, entries = time.monotonic(), self._entries
        for address, record in records:
            entries[address] = (now, record)
            entries.move_to_end(address)
        while len(entries) > self.size:
            self._entries.popitem(last=False)
            self.complete = False

    def clear(self) -> None:
        self._entries.clear()
        self.complete = False


@dataclass
class Unwritten:
    """What a rebuild folded for one partition and has not written yet (`RedisSink._defer`)."""

    durable: int  # the partition's checkpoint in Redis
    through: int  # its checkpoint once this is written
    records: dict[Address, Record] = field(default_factory=dict)
    rejected: list[tuple[int, Outcome]] = field(default_factory=list)
    forgotten: list[tuple[Address, Remembered]] = field(default_factory=list)
    index: dict[Address, dict[str, Remembered]] = field(default_factory=dict)  # ``forgotten``, by key


class GenerationRetired(RuntimeError):
    """A rebuild's generation was overtaken by a newer live generation; the rebuild must stop."""


# A batch's effect on keys, handed to a live writer's effect callback before the batch commits: the partition,
# the checkpoint it moves to, and each touched key's record before and after it (streams carry no effect).
Effect = Callable[[int, int, Mapping[Address, "Record | None"], Mapping[Address, Record]], Awaitable[None]]


@dataclass
class Folded:
    """A batch folded over the records it touches: what the script writes, and each event's outcome."""

    outcomes: list[Outcome | None]
    before: dict[Address, Record | None]  # each touched key's record before the batch, when asked for
    touched: dict[Address, Record] = field(default_factory=dict)
    rejected: list[tuple[int, Outcome]] = field(default_factory=list)
    forgotten: list[tuple[Address, Remembered]] = field(default_factory=list)


class RedisBatchWriter(ProjectionSink):
    """What the live writer (`RedisSink`) and a rebuild's generation builder (`GenerationBuilder`) share: a
    batch's records read (one pipeline, what the cache lacks), folded, and written with the checkpoint in
    one script (APPLY_BATCH)."""

    name = "redis"
    transient_errors = (*TRANSIENT, RedisConnectionError, RedisTimeoutError, BusyLoadingError)

    def __init__(self, redis_url: str, layout: RedisLayout, partitions: int, generation: int) -> None:
        self.client = aioredis.from_url(redis_url)
        self.layout = layout
        self.partitions = partitions
        self.generations: dict[int, int] = dict.fromkeys(range(partitions), generation)
        self.cache = RecordCache()
        self._script = self.client.register_script(APPLY_BATCH)

    async def close(self) -> None:
        await self.client.aclose()

    async def drop(self) -> int:
        dropped = 0
        async for name in self.client.scan_iter(match=f"{self.layout.prefix}:*", count=1000):
            dropped += await self.client.unlink(name)
        return dropped

    async def records(self, tenant: str) -> dict[str, Record]:
        """Every record of ``tenant`` (tombstones included) in the generations written, for diffs and checks."""
        await self.checkpoints()  # reads the generation pointers
        found: dict[str, Record] = {}
        for partition in range(self.partitions):
            prefix = self.layout_of(partition).record(partition, tenant, "")
            async for name in self.client.scan_iter(match=prefix + "*", count=1000):
                record = decode_record(await self.client.hgetall(name))  # type: ignore[arg-type]
                if record is not None:
                    found[name.decode()[len(prefix):]] = record
        return found

    def layout_of(self, partition: int) -> RedisLayout:
        return self.layout.at(self.generations[partition])

    async def checkpoints(self) -> dict[int, int]:
        self.cache.clear()  # whoever asks is about to resume from what the store says, not from this cache
        values = await self.client.mget([self.layout_of(p).checkpoint(p) for p in range(self.partitions)])
        return {partition: int(value) for partition, value in enumerate(values) if value is not None}

    async def fold(self, partition: int, events: Sequence[Positioned], *, keep_before: bool = False) -> Folded:
        """Fold ``events`` over the records they touch (as Redis, or what this writer knows newer, holds them);
        ``keep_before``: keep each touched key's record as it was before the batch (a copy: only when asked)."""
        addresses = [self._address(partition, item) for item in events]
        records, index = await self._read_records(events, addresses)
        folded = Folded([], dict(records) if keep_before else {})
        for item, address in zip(events, addresses, strict=True):
            command_id = item.event.command_id
            known = index.get(address) if index and command_id is not None else None
            outcome = apply(records.get(address), item.event, item.offset,
                            known.get(command_id) if known else None)
            folded.outcomes.append(outcome)
            if outcome.accepted and outcome.record is not None:
                records[address] = folded.touched[address] = outcome.record
                if outcome.forgotten is not None:
                    remember(index.setdefault(address, {}), outcome)
                    folded.forgotten.append((address, outcome.forgotten))
            else:
                folded.rejected.append((item.offset, outcome))
        return folded

    async def _write(self, partition: int, through: int, expected: int, folded: Folded, announced: bytes) -> None:
        """Write ``folded`` and move the checkpoint from ``expected`` to ``through``, announcing ``announced``
        (the lines naming the keys changed), in one script; CheckpointMoved if the checkpoint is not
        ``expected``."""
        layout = self.layout_of(partition)
        keys = [layout.checkpoint(partition), layout.pointer(partition), layout.unfinished(partition)]
        args: list[str | int] = [expected, through, layout.applied_channel, partition, layout.generation]
        try:
            await self._send(partition, keys, args, folded, announced)
        except BaseException as error:
            self.cache.clear()  # the script may or may not have run: Redis is the truth again
            if not isinstance(error, ResponseError):
                raise
            message = str(error)
            if message.startswith("CHECKPOINT "):
                raise CheckpointMoved(partition, expected, int(message.split()[1])) from None
            if message.startswith("GENERATION "):
                await self._overtaken(partition, expected, int(message.split()[1]))
            raise
        self.cache.put_many(folded.touched.items())

    async def _send(self, partition: int, keys: list[str], args: list[str | int], folded: Folded,
                    announced: bytes) -> None:
        operations = self._operations(partition, folded.touched, folded.rejected, folded.forgotten)
        await self._script(keys=keys[:2], args=[*args, *operations, announced])

    async def _overtaken(self, partition: int, expected: int, live: int) -> None:
        """The partition's pointer names a newer generation than this writer's: raise what the caller does."""
        raise NotImplementedError

    def _address(self, partition: int, item: Positioned) -> Address:
        """The partition a key routes to is where readers look, whichever partition the event came in
        on (events produced by other tools may carry another Kafka key)."""
        tenant, key = item.event.tenant, item.event.key
        if item.event.type == STREAM_APPEND:
            home = partition if item.routed else partition_for(stream_key(tenant, key), self.partitions)
            return home, tenant, STREAM_MARK + key
        home = partition if item.routed else partition_for(kafka_key(tenant, key), self.partitions)
        return home, tenant, key

    def _record_name(self, address: Address) -> str:
        home, tenant, key = address
        if _is_stream(address):
            return self.layout_of(home).stream(home, tenant, key[len(STREAM_MARK):])
        return self.layout_of(home).record(home, tenant, key)

    def _known(self, address: Address) -> tuple[bool, Record | None]:
        """What this writer knows of the record at ``address`` without asking Redis: (known, record)."""
        return self.cache.get(address)

    def _known_commands(self, address: Address) -> dict[str, Remembered]:
        """Command ids of the key that this writer knows were forgotten and Redis may not hold yet."""
        return {}

    async def _read_records(
        self, events: Sequence[Positioned], addresses: Sequence[Address]
    ) -> tuple[dict[Address, Record | None], dict[Address, dict[str, Remembered]]]:
        """The records the events (at ``addresses``) touch, and what their command indexes hold of the events'
        command ids.

        One pipeline: the records not known already, and the index lookups of keys that may need them
        (`consults_index`; a record not yet read is looked up at once rather than after a second trip)."""
        ids_of: dict[Address, list[str]] = {}  # the command ids of the events that carry one
        for item, address in zip(events, addresses, strict=True):
            if item.event.command_id is not None:
                ids_of.setdefault(address, []).append(item.event.command_id)
        records: dict[Address, Record | None] = {}
        missing: list[Address] = []
        lookups: dict[Address, list[str]] = {}
        for address in dict.fromkeys(addresses):
            ids = ids_of.get(address) if ids_of else None
            known, record = self._known(address)
            if known:
                records[address] = record
                if consults_index(record) and ids:
                    lookups[address] = ids
            else:
                missing.append(address)
                if ids:
                    lookups[address] = ids
        index: dict[Address, dict[str, Remembered]] = {}
        if missing or lookups:
            async with self.client.pipeline(transaction=False) as pipe:
                for address in missing:
                    pipe.hgetall(self._record_name(address))
                for (home, tenant, key), ids in lookups.items():
                    pipe.hmget(self.layout_of(home).commands(home, tenant, key), ids)
                results = iter(await pipe.execute())
            records.update((address, decode_record(next(results))) for address in missing)
            for address, ids in lookups.items():
                index[address] = {command_id: decode_remembered(command_id, raw)
                                  for command_id, raw in zip(ids, next(results), strict=True) if raw is not None}
        for address in lookups:
            newer = self._known_commands(address)
            if newer:
                index.setdefault(address, {}).update(newer)
        return records, index

    def _operations(
        self, partition: int, touched: dict[Address, Record], rejected: list[tuple[int, Outcome]],
        forgotten: list[tuple[Address, Remembered]],
    ) -> tuple[bytes, bytes, bytes, bytes]:
        now = now_ms()
        records: list[list[str]] = []
        index: dict[tuple[str, str], list[str]] = {}  # (index, "+" or "-") -> keys
        for address, record in touched.items():
            home, tenant, key = address
            records.append([self._record_name(address), str(physical_expiry(record, now)), *encode_record(record)])
            if not _is_stream(address):  # a key (not a stream): in its tenant's key index
                change = (self.layout_of(home).index(home, tenant), "-" if record.deleted else "+")
                index.setdefault(change, []).append(key)
        outcomes = []
        for offset, outcome in rejected:
            summary = orjson.dumps({"status": outcome.status.value, "reason": outcome.reason,
                                    "version": outcome.version}).decode()
            outcomes.append((self.layout_of(partition).outcome(partition, offset), summary, str(OUTCOME_TTL_SECONDS)))
        commands = [command_index_entry(self.layout_of(home), home, tenant, key, entry, now)
                    for (home, tenant, key), entry in forgotten]
        changes = [[name, op, *keys] for (name, op), keys in index.items()]
        return orjson.dumps(records), orjson.dumps(changes), orjson.dumps(outcomes), orjson.dumps(commands)


class RedisSink(RedisBatchWriter):
    """The hot projection's live writer: it writes each partition's live generation, follows the pointer when
    a rebuild moves it, and announces each batch with the keys it changed. ``effect``: called with each
    batch's effect on keys before it commits (the embedder carries it to the vector views); what it does
    must be harmless to repeat, since a failed commit makes the batch run again."""

    def __init__(self, redis_url: str, layout: RedisLayout, partitions: int, *, effect: Effect | None = None,
                 wait_replicas: int = 0, wait_timeout_ms: int = 1000) -> None:
        super().__init__(redis_url, layout, partitions, generation=0)
        self.effect = effect
        self.wait_replicas, self.wait_timeout_ms = wait_replicas, wait_timeout_ms

    async def refresh_generations(self) -> None:
        """Follow the generation pointers (a rebuild may have moved them)."""
        pointers = await self.client.mget([self.layout.pointer(p) for p in range(self.partitions)])
        self.generations = {p: int(value or 0) for p, value in enumerate(pointers)}

    async def checkpoints(self) -> dict[int, int]:
        await self.refresh_generations()
        return await super().checkpoints()

    async def apply(
        self, partition: int, events: Sequence[Positioned], through: int, expected: int
    ) -> list[Outcome | None]:
        folded = await self.fold(partition, events, keep_before=self.effect is not None)
        keys = [address for address in folded.touched if not _is_stream(address)]
        if self.effect is not None:
            await self.effect(partition, through, folded.before,
                              {address: folded.touched[address] for address in keys})
        await self._write(partition, through, expected, folded,
                          Announcement.key_lines([address[1:] for address in keys]))
        if self.wait_replicas:
            await self._wait_for_replicas(partition, through)
        return folded.outcomes

    async def _overtaken(self, partition: int, expected: int, live: int) -> None:
        self.generations[partition] = live
        found = await self.client.get(self.layout_of(partition).checkpoint(partition))
        why = f" (a rebuild moved it to generation {live})"
        raise CheckpointMoved(partition, expected, int(found) if found is not None else -1, why)

    async def _wait_for_replicas(self, partition: int, through: int) -> None:
        acknowledged = await self.client.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
        if acknowledged < self.wait_replicas:
            log.warning("partition %d through offset %d: %d of %d Redis replicas acknowledged within %d ms; "
                        "a failover now could lose this batch from the hot state until it is replayed",
                        partition, through, acknowledged, self.wait_replicas, self.wait_timeout_ms)


class GenerationBuilder(RedisBatchWriter):
    """A rebuild's writer of generation ``generation``, which nobody reads until it is switched in.

    It folds batches in memory and writes what it folded once ``UNWRITTEN_RECORDS`` records have piled up, or
    when asked (`flush`): a key updated many times in between is written once. A batch too big for one
    script is written in parts (APPLY_PART), the checkpoint last. Starting an empty generation, it knows
    every record there is, so it never reads one back."""

    def __init__(self, redis_url: str, layout: RedisLayout, partitions: int, generation: int) -> None:
        super().__init__(redis_url, layout, partitions, generation)
        self.generation = generation
        self.unwritten: dict[int, Unwritten] = {}  # folded batches not yet written, per partition
        self.written: dict[int, int] = {}  # the checkpoints in Redis, as last read or written
        self._part = self.client.register_script(APPLY_PART)

    async def checkpoints(self) -> dict[int, int]:
        found = await super().checkpoints()
        for partition in await self._unfinished(found):
            log.warning("redis rebuild: partition %d of generation %d was interrupted in the middle of a batch; "
                        "building it again from offset 0", partition, self.generation)
            async for name in self.client.scan_iter(match=self.layout_of(partition).partition_prefix(partition)
                                                    + "*", count=1000):
                await self.client.unlink(name)
            found.pop(partition, None)
            self.unwritten.pop(partition, None)
        self.written = dict(found)
        # What this sink folded and holds in memory counts: it is written before anything reads it.
        found.update((partition, unwritten.through) for partition, unwritten in self.unwritten.items())
        # An empty generation: nothing is there that this sink will not have written.
        self.cache.complete = not found
        return found

    async def _unfinished(self, found: Mapping[int, int]) -> list[int]:
        """Partitions whose last batch wrote some of its parts but not the last one (the checkpoint)."""
        markers = await self.client.mget([self.layout_of(p).unfinished(p) for p in range(self.partitions)])
        return [partition for partition, marker in enumerate(markers)
                if marker is not None and int(marker) == found.get(partition, NO_CHECKPOINT)]

    async def apply(
        self, partition: int, events: Sequence[Positioned], through: int, expected: int
    ) -> list[Outcome | None]:
        unwritten = self.unwritten.get(partition)
        if unwritten is None:
            durable = self.written.get(partition, expected)
            unwritten = self.unwritten[partition] = Unwritten(durable=durable, through=durable)
        if expected != unwritten.through:
            raise CheckpointMoved(partition, expected, unwritten.through, " (in what this rebuild has not written)")
        folded = await self.fold(partition, events)
        unwritten.through = through
        unwritten.records.update(folded.touched)
        unwritten.rejected += folded.rejected
        unwritten.forgotten += folded.forgotten
        for address, entry in folded.forgotten:
            unwritten.index.setdefault(address, {})[entry[0]] = entry
        if len(unwritten.records) >= UNWRITTEN_RECORDS:
            await self.flush(partition)
        return folded.outcomes

    async def flush(self, partition: int) -> None:
        """Write what was folded for ``partition`` and not written yet, with its checkpoint."""
        unwritten = self.unwritten.get(partition)
        if unwritten is None:
            return
        if unwritten.through != unwritten.durable:  # kept until written: a failed write is tried again later
            folded = Folded([], {}, unwritten.records, unwritten.rejected, unwritten.forgotten)
            await self._write(partition, unwritten.through, unwritten.durable, folded, b"")
        self.written[partition] = unwritten.through
        del self.unwritten[partition]

    async def _send(self, partition: int, keys: list[str], args: list[str | int], folded: Folded,
                    announced: bytes) -> None:
        """The parts first, sent as they are encoded (while Redis writes one, this process encodes the next),
        then the last part with the checkpoint."""
        unwritten = list(folded.touched.items())
        parts = []
        while len(unwritten) > PART_RECORDS:
            part, unwritten = dict(unwritten[:PART_RECORDS]), unwritten[PART_RECORDS:]
            operations = self._operations(partition, part, [], [])
            parts.append(asyncio.ensure_future(self._part(keys=keys, args=[*args, *operations])))
            await asyncio.sleep(0)  # let it go out
        for failed in await asyncio.gather(*parts, return_exceptions=True):
            if isinstance(failed, BaseException):
                raise failed
        last = Folded([], {}, dict(unwritten), folded.rejected, folded.forgotten)
        await super()._send(partition, keys, args, last, announced)

    async def _overtaken(self, partition: int, expected: int, live: int) -> None:
        raise GenerationRetired(f"generation {live} went live while building {self.generation}")

    def _known(self, address: Address) -> tuple[bool, Record | None]:
        """What was folded and not written yet is newer than anything cached."""
        for unwritten in self.unwritten.values():
            record = unwritten.records.get(address)
            if record is not None:
                return True, record
        return self.cache.get(address)

    def _known_commands(self, address: Address) -> dict[str, Remembered]:
        found: dict[str, Remembered] = {}
        for unwritten in self.unwritten.values():
            found.update(unwritten.index.get(address, {}))
        return found


def _is_stream(address: Address) -> bool:
    return address[2].startswith(STREAM_MARK)
