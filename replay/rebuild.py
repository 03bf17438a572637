"""`ams rebuild redis`: a new generation of the hot projection from offset 0, switched in with no downtime.

1. Generation N+1 is filled from offset 0 by the same `Projector` and sink code the live worker runs,
   beside the live generation N, which keeps serving and keeps receiving new events.
2. After every batch, each partition whose new checkpoint has reached the live one is switched: one Lua
   script compares the two checkpoints and moves the partition's pointer (atomically, per partition, so
   a reader never sees a generation older than the one it saw before).
3. The live worker's next batch for a switched partition is refused by its generation guard; it follows
   the pointer, re-reads its checkpoint from the new generation and carries on there.
4. Once every partition is switched, and after a grace period in which every gateway has moved on (they
   re-read pointers every 0.5 s), the retired generation is dropped.

Interrupted anywhere, the live generation is untouched: unswitched partitions still read it. Running the
command again resumes the unfinished generation from its own checkpoints (``--restart`` starts over).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from ams.settings import Settings
from projections.dead_letters import DeadLetters
from projections.projector import Projector, RawRecord, Reseek
from projections.redis_kv import RedisSink
from projections.redis_layout import RedisLayout

console = Console()
GRACE_SECONDS = 3.0  # > several gateway polls (0.5 s) before a retired generation is dropped
POLL_SECONDS = 1.0

# KEYS: the partition's pointer. ARGV: new generation, prefix, partition.
SWITCH = """
local live = tonumber(redis.call('GET', KEYS[1]) or '0')
local new = tonumber(ARGV[1])
if live >= new then return 1 end
local function checkpoint(generation)
  return tonumber(redis.call('GET', ARGV[2] .. ':g' .. generation .. ':{p' .. ARGV[3] .. '}:ckpt') or '-1')
end
if checkpoint(new) >= checkpoint(live) then
  redis.call('SET', KEYS[1], ARGV[1])
  -- the new generation holds every event the live one did: readers may trust it (see redis_recovery.py)
  redis.call('SET', ARGV[2] .. ':g' .. new .. ':{p' .. ARGV[3] .. '}:live', 1)
  return 1
end
return 0
"""


@dataclass
class RebuildState:
    """What `GET /v1/admin/rebuilds/redis` reports, kept in Redis while a rebuild runs."""

    projection: str
    generation: int
    state: str = "building"  # building -> dropping -> done | failed
    applied: int = 0
    total: int = 0
    events_per_second: float = 0.0
    eta_seconds: float | None = None
    switched: list[int] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    finished: float | None = None
    error: str | None = None


def state_key(layout: RedisLayout, projection: str) -> str:
    return f"{layout.prefix}:rebuild:{projection}"


async def rebuild_redis(settings: Settings, *, restart: bool = False, quiet: bool = False) -> RebuildState:
    layout = RedisLayout(settings.redis_prefix)
    client = aioredis.from_url(settings.redis_url)
    try:
        live = await _pointers(client, layout, settings.partitions)
        building = max(live.values()) + 1
        if restart:
            await drop_generation(client, layout.at(building), quiet=quiet)
        state = RebuildState("redis", building)
        await save_state(client, layout, state)
        try:
            await _build(settings, client, layout, state, quiet)
            state.state = "dropping"
            await save_state(client, layout, state)
            await asyncio.sleep(GRACE_SECONDS)
            for retired in sorted(set(live.values())):
                await drop_generation(client, layout.at(retired), quiet=quiet)
            state.state, state.finished = "done", time.time()
        except BaseException as error:
            state.state, state.error, state.finished = "failed", repr(error), time.time()
            raise
        finally:
            await save_state(client, layout, state)
        return state
    finally:
        await client.aclose()


async def _build(settings: Settings, client: aioredis.Redis, layout: RedisLayout, state: RebuildState,
                 quiet: bool) -> None:
    sink = RedisSink(settings.redis_url, layout, settings.partitions, building=state.generation)
    dead_letters = DeadLetters(settings.kafka_bootstrap, settings.dlq_topic, settings.events_topic)
    projector = Projector(sink, dead_letters, settings.default_tenant)
    switch = client.register_script(SWITCH)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                isolation_level="read_committed", max_partition_fetch_bytes=8 << 20)
    await consumer.start()
    try:
        await projector.load_checkpoints()
        partitions = [TopicPartition(settings.events_topic, p) for p in range(settings.partitions)]
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, projector.resume_offset(tp.partition))
        remaining = set(partitions)
        started, applied_at_start = time.monotonic(), 0
        with Progress(TextColumn("rebuilding redis generation {task.fields[generation]}"), BarColumn(),
                      MofNCompleteColumn(), TaskProgressColumn(), TextColumn("{task.fields[rate]} ev/s"),
                      TimeRemainingColumn(), console=console, disable=quiet) as bar:
            task = bar.add_task("rebuild", total=None, generation=state.generation, rate="-")
            heads: dict[TopicPartition, int] = {}
            polled = 0.0
            while remaining:
                if time.monotonic() - polled > POLL_SECONDS:
                    # The log's head, and the state for the admin endpoint, once a second: not every batch.
                    heads = await consumer.end_offsets(list(remaining))
                    polled = time.monotonic()
                    await save_state(client, layout, state)
                behind = {tp for tp in remaining if projector.resume_offset(tp.partition) < heads[tp]}
                if behind:
                    batch = await consumer.getmany(*behind, timeout_ms=200, max_records=20_000)
                    records = [RawRecord.of(r) for tp_records in batch.values() for r in tp_records]
                    try:
                        await projector.handle(records)
                    except Reseek as reseek:
                        for partition, offset in reseek.offsets.items():
                            consumer.seek(TopicPartition(settings.events_topic, partition), offset)
                    state.applied += len(records)
                else:
                    # Caught up with the head last seen: switch each partition the live one is not ahead of.
                    for tp in sorted(remaining, key=lambda tp: tp.partition):
                        args = [state.generation, layout.prefix, tp.partition]
                        if await switch(keys=[layout.pointer(tp.partition)], args=args):
                            remaining.discard(tp)
                            consumer.pause(tp)
                            state.switched.append(tp.partition)
                    polled = 0.0  # what did not switch is behind a head that moved: look again now
                state.total = state.applied + sum(max(0, heads[tp] - projector.resume_offset(tp.partition))
                                                  for tp in remaining)
                elapsed = max(time.monotonic() - started, 1e-6)
                state.events_per_second = (state.applied - applied_at_start) / elapsed
                state.eta_seconds = ((state.total - state.applied) / state.events_per_second
                                     if state.events_per_second else None)
                bar.update(task, completed=state.applied, total=state.total, rate=f"{state.events_per_second:,.0f}")
    finally:
        await consumer.stop()
        await dead_letters.close()
        await sink.close()


async def _pointers(client: aioredis.Redis, layout: RedisLayout, partitions: int) -> dict[int, int]:
    values = await client.mget([layout.pointer(partition) for partition in range(partitions)])
    return {partition: int(value or 0) for partition, value in enumerate(values)}


async def drop_generation(client: aioredis.Redis, layout: RedisLayout, *, quiet: bool = False) -> int:
    """Delete every key of one generation, in batches of UNLINK, with a progress count."""
    dropped = 0
    with Progress(TextColumn(f"dropping generation {layout.generation}"), TextColumn("{task.completed} keys"),
                  console=console, disable=quiet) as bar:
        task = bar.add_task("drop", total=None)
        async for keys in _scan_batches(client, layout.generation_pattern()):
            dropped += await client.unlink(*keys)
            bar.update(task, completed=dropped)
    return dropped


async def _scan_batches(client: aioredis.Redis, pattern: str, size: int = 1000):  # type: ignore[no-untyped-def]
    cursor = 0
    while True:
        cursor, keys = await client.scan(cursor, match=pattern, count=size)
        if keys:
            yield keys
        if cursor == 0:
            return


async def save_state(client: aioredis.Redis, layout: RedisLayout, state: RebuildState) -> None:
    await client.set(state_key(layout, state.projection), orjson.dumps(asdict(state)), ex=7 * 86400)


async def read_state(client: aioredis.Redis, layout: RedisLayout, projection: str) -> dict[str, object] | None:
    raw = await client.get(state_key(layout, projection))
    return orjson.loads(raw) if raw is not None else None
