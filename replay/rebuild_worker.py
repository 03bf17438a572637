"""One rebuild worker: a process that folds a set of partitions into the new generation and switches them.

`replay.rebuild_redis` starts one per CPU (each with its own Kafka consumer and Redis connection, so decoding
and folding run in parallel) and shows their combined progress. A worker uses the same `Projector` as the
live worker, driven by the same `Feed` (to the head, in windows), and the generation builder that shares the
live `RedisSink`'s batch writer, with two differences that make it fast:

- It folds events in memory and writes only when many records are waiting or the partition is caught up
  (`GenerationBuilder.flush`), so a key updated many times in between is written once (the new generation
  is read by nobody until it is switched).
- It knows the generation starts empty, so it never reads a record back from Redis.

A worker whose coordinator died stops at once, so a killed rebuild never keeps writing behind an operator.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from redis.commands.core import AsyncScript

from ams import kafka_clients
from ams.namespaces import live
from ams.settings import Settings
from projections.feed import Feed, Window
from projections.projectors import projector_for
from projections.redis_kv import GenerationBuilder
from projections.redis_layout import RedisLayout

REPORT_SECONDS = 0.25

# KEYS: the partition's pointer, the live generation's checkpoint, the new generation's checkpoint and its
# "live" mark. ARGV: the new generation, the live generation the keys were named for. Returns 1 when the new
# generation is live (now or already), 0 when the live one is ahead of it, -1 when the pointer moved since
# the keys were named (name them again).
SWITCH = """
local live = tonumber(redis.call('GET', KEYS[1]) or '0')
local new = tonumber(ARGV[1])
if live >= new then return 1 end
if live ~= tonumber(ARGV[2]) then return -1 end
if tonumber(redis.call('GET', KEYS[3]) or '-1') >= tonumber(redis.call('GET', KEYS[2]) or '-1') then
  redis.call('SET', KEYS[1], ARGV[1])
  -- the new generation holds every event the live one did: readers may trust it (see redis_recovery.py)
  redis.call('SET', KEYS[4], 1)
  return 1
end
return 0
"""


@dataclass
class WorkerProgress:
    """What a worker tells the coordinator, a few times a second and once at the end."""

    worker: int
    applied: int = 0
    behind: int = 0  # events between its partitions' checkpoints and the log's head
    switched: list[int] = field(default_factory=list)
    done: bool = False
    error: str | None = None


Report = Callable[[WorkerProgress], None]


def run(settings: Settings, generation: int, partitions: list[int], worker: int, report: Report,
        window: Window) -> None:
    """A worker process's entry point."""
    # A worker keeps hundreds of thousands of small objects alive (fetched records, their events, folded
    # records), none of them in reference cycles, and the cyclic collector scans them each time it runs: with
    # the default thresholds it would take half the time, and still an eighth every 100,000 objects. Collect
    # once a million objects have piled up instead.
    gc.freeze()
    gc.set_threshold(1_000_000, 50, 1000)
    progress = WorkerProgress(worker)
    try:
        asyncio.run(build(settings, generation, partitions, progress, report, window, parent=os.getppid()))
    except BaseException as error:
        progress.error = f"{type(error).__name__}: {error}"
        report(progress)
        raise


async def build(settings: Settings, generation: int, partitions: list[int], progress: WorkerProgress,
                report: Report, window: Window, *, parent: int | None = None) -> None:
    """Fold ``partitions`` from their checkpoints in ``generation`` to the log's head and switch each one."""
    layout = RedisLayout(settings.redis_prefix)
    sink = GenerationBuilder(settings.redis_url, layout, settings.partitions, generation)
    projector = projector_for(sink, settings, live(settings), label="redis rebuild")
    client = aioredis.from_url(settings.redis_url)
    switch = client.register_script(SWITCH)
    consumer = AIOKafkaConsumer(**settings.kafka.client_options(), enable_auto_commit=False,
                                isolation_level="read_committed", max_partition_fetch_bytes=8 << 20)
    reported = 0.0

    async def told(applied: int, behind: int) -> None:
        nonlocal reported
        if parent is not None and os.getppid() != parent:
            raise SystemExit("the rebuild that started this worker is gone; stopping")
        progress.applied, progress.behind = progress.applied + applied, behind
        if time.monotonic() - reported > REPORT_SECONDS:
            report(progress)
            reported = time.monotonic()

    feed = Feed(projector, consumer, settings.events_topic, group=False, progress=told)
    await consumer.start()
    try:
        await projector.load_checkpoints()
        remaining = set(partitions)
        while remaining:
            consumer.assign([TopicPartition(settings.events_topic, partition) for partition in sorted(remaining)])
            await feed.to_head(window)
            # What the sink folded and has not written yet, all partitions at once: while Redis runs one
            # partition's script, this process encodes the next one's. Then switch each partition the live
            # one is not ahead of; the others go on to the head that has moved meanwhile.
            await asyncio.gather(*(sink.flush(partition) for partition in remaining))
            for partition in sorted(remaining):
                if await _switched(client, switch, layout, partition, generation):
                    remaining.discard(partition)
                    progress.switched.append(partition)
            await told(0, 0)
        progress.behind, progress.done = 0, True
        report(progress)
    finally:
        await kafka_clients.stop(consumer)
        await projector.dead_letters.close()
        await sink.close()
        await client.aclose()


async def _switched(client: aioredis.Redis, switch: AsyncScript, layout: RedisLayout, partition: int,
                    generation: int) -> bool:
    """Switch ``partition`` to ``generation`` if it has caught up with the live one (SWITCH); whether it is live."""
    while True:
        live = int(await client.get(layout.pointer(partition)) or 0)
        keys = [layout.pointer(partition), layout.at(live).checkpoint(partition),
                layout.at(generation).checkpoint(partition), layout.at(generation).live(partition)]
        result = int(await switch(keys=keys, args=[generation, live]))
        if result >= 0:
            return result == 1
