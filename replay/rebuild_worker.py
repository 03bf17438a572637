"""One rebuild worker: a process that folds a set of partitions into the new generation and switches them.

`replay.rebuild` starts one per CPU (each with its own Kafka consumer and Redis connection, so decoding
and folding run in parallel) and shows their combined progress. A worker uses the same `Projector` and
`RedisSink` as the live worker, with two differences that make it fast:

- Its sink folds events in memory and writes only when many records are waiting or the partition is
  caught up (`RedisSink.flush`), so a key updated many times in between is written once (the new
  generation is read by nobody until it is switched).
- The sink knows the generation starts empty, so it never reads a record back from Redis.

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

from ams import kafka_clients
from ams.namespaces import live
from ams.settings import Settings
from projections.projector import LogRecord, Reseek
from projections.projectors import projector_for
from projections.redis_kv import RedisSink
from projections.redis_layout import RedisLayout

POLL_SECONDS = 1.0
REPORT_SECONDS = 0.25

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
class WorkerProgress:
    """What a worker tells the coordinator, a few times a second and once at the end."""

    worker: int
    applied: int = 0
    behind: int = 0  # events between its partitions' checkpoints and the log's head
    switched: list[int] = field(default_factory=list)
    done: bool = False
    error: str | None = None


Report = Callable[[WorkerProgress], None]


@dataclass(frozen=True)
class Window:
    """When the records fetched of a partition are handed to the projector together (before it is caught up).

    A window of many events reads, folds and writes a key once however many of them it has (`bench.rebuild`,
    1M events over 100,000 keys: 0.30x the raw read, against 0.23x with windows of 10,000 records). It closes
    earlier once its values reach ``value_bytes``: a bound on memory."""

    records: int = 100_000
    value_bytes: int = 32 << 20


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
    sink = RedisSink(settings.redis_url, layout, settings.partitions, building=generation)
    projector = projector_for(sink, settings, live(settings), label="redis rebuild")
    client = aioredis.from_url(settings.redis_url)
    switch = client.register_script(SWITCH)
    consumer = AIOKafkaConsumer(**settings.kafka.client_options(), enable_auto_commit=False,
                                isolation_level="read_committed", max_partition_fetch_bytes=8 << 20)
    await consumer.start()
    try:
        await projector.load_checkpoints()
        remaining = {TopicPartition(settings.events_topic, p) for p in partitions}
        consumer.assign(list(remaining))
        position: dict[TopicPartition, int] = {}
        for tp in remaining:
            position[tp] = projector.resume_offset(tp.partition)
            consumer.seek(tp, position[tp])
        pending: dict[TopicPartition, list[LogRecord]] = {tp: [] for tp in remaining}
        pending_bytes = dict.fromkeys(remaining, 0)

        def window_full(tp: TopicPartition) -> bool:
            return len(pending[tp]) >= window.records or pending_bytes[tp] >= window.value_bytes

        def seek(reseek: Reseek) -> None:
            for partition, offset in reseek.offsets.items():
                tp = TopicPartition(settings.events_topic, partition)
                consumer.seek(tp, offset)
                position[tp] = offset

        heads: dict[TopicPartition, int] = {}
        polled = reported = 0.0
        while remaining:
            if parent is not None and os.getppid() != parent:
                raise SystemExit("the rebuild that started this worker is gone; stopping")
            if time.monotonic() - polled > POLL_SECONDS:
                heads = await consumer.end_offsets(list(remaining))
                polled = time.monotonic()
            fetching = [tp for tp in remaining if position[tp] < heads[tp] and not window_full(tp)]
            if fetching:
                batch = await consumer.getmany(*fetching, timeout_ms=200, max_records=20_000)
                for tp, records in batch.items():
                    pending[tp].extend(records)
                    pending_bytes[tp] += sum(len(record.value or b"") for record in records)
                for tp in fetching:
                    position[tp] = await consumer.position(tp)  # past transaction markers too
            ready = [tp for tp in remaining
                     if pending[tp] and (window_full(tp) or position[tp] >= heads[tp])]
            if ready:
                try:
                    await projector.handle_partitions({tp.partition: pending[tp] for tp in ready})
                except Reseek as reseek:
                    seek(reseek)
                progress.applied += sum(len(pending[tp]) for tp in ready)
                for tp in ready:
                    pending[tp], pending_bytes[tp] = [], 0
            elif not fetching:
                # Caught up with the head last seen: over the markers that end the partitions (as the live
                # worker does when idle, or the live checkpoint would stay ahead), write everything, then
                # switch each partition the live one is not ahead of.
                try:
                    await projector.settle({tp.partition: position[tp] for tp in remaining}, idle=0.0)
                except Reseek as reseek:
                    seek(reseek)
                    continue
                # What the sink folded and has not written yet, all partitions at once: while Redis runs one
                # partition's script, this process encodes the next one's.
                await asyncio.gather(*(sink.flush(tp.partition) for tp in remaining))
                for tp in sorted(remaining, key=lambda tp: tp.partition):
                    arguments = [generation, layout.prefix, tp.partition]
                    if await switch(keys=[layout.pointer(tp.partition)], args=arguments):
                        remaining.discard(tp)
                        consumer.pause(tp)
                        progress.switched.append(tp.partition)
                polled = 0.0  # what did not switch is behind a head that moved: look again now
            if time.monotonic() - reported > REPORT_SECONDS:
                progress.behind = sum(max(0, heads[tp] - position[tp]) + len(pending[tp]) for tp in remaining)
                report(progress)
                reported = time.monotonic()
        progress.behind, progress.done = 0, True
        report(progress)
    finally:
        await kafka_clients.stop(consumer)
        await projector.dead_letters.close()
        await sink.close()
        await client.aclose()
