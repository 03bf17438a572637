"""Rebuild speed: `ams rebuild redis` over N events against a raw aiokafka consumer reading the same topic.

    python -m bench.rebuild [--events 1000000] [--keys 100000]

Runs in a topic and Redis namespace of its own (never the live ones) and removes them afterwards.
Target: the rebuild reaches at least 0.25x the raw read's events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import time
import uuid

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from rich.progress import Progress

from ams import kafka_clients
from ams.settings import Settings, get_settings
from bench.common import console, progress
from commands.envelope import DELETE, PATCH, PUT, Event, encode, uuid7
from commands.keys import kafka_key
from projections.redis_layout import RedisLayout
from replay.rebuild_redis import drop_generation, rebuild_redis
from replay.rebuild_state import GRACE_SECONDS


async def produce(settings: Settings, events: int, keys: int) -> None:
    producer = AIOKafkaProducer(**settings.kafka.client_options(), acks="all", enable_idempotence=True,
                                linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    rng = random.Random(7)
    try:
        with Progress(console=progress) as bar:
            task = bar.add_task(f"producing {events:,} events", total=events)
            pending = []
            for i in range(events):
                key, roll = f"k{rng.randrange(keys)}", rng.random()
                kind = PUT if roll < 0.8 else PATCH if roll < 0.95 else DELETE
                data = None if kind == DELETE else {"i": i, "note": "x" * 40} if kind == PUT else {"seen": i}
                event = Event(kind, "bench", key, data, id=uuid7(), ts=1_700_000_000_000 + i, actor="bench")
                pending.append(await producer.send(settings.events_topic, encode(event), key=kafka_key("bench", key)))
                if len(pending) >= 20_000:
                    await asyncio.gather(*pending)
                    bar.advance(task, len(pending))
                    pending = []
            await asyncio.gather(*pending)
            bar.advance(task, len(pending))
    finally:
        await kafka_clients.stop(producer)


async def raw_read(settings: Settings, events: int) -> float:
    """Events/s of a bare consumer reading the whole topic with the rebuild's fetch settings."""
    consumer = AIOKafkaConsumer(**settings.kafka.client_options(), enable_auto_commit=False,
                                isolation_level="read_committed", max_partition_fetch_bytes=8 << 20)
    await consumer.start()
    try:
        partitions = [TopicPartition(settings.events_topic, p) for p in range(settings.partitions)]
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, 0)
        seen, started = 0, time.perf_counter()
        with Progress(console=progress) as bar:
            task = bar.add_task("raw aiokafka read", total=events)
            while seen < events:
                batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
                count = sum(len(records) for records in batch.values())
                seen += count
                bar.advance(task, count)
        return seen / (time.perf_counter() - started)
    finally:
        await kafka_clients.stop(consumer)


async def compact_append_only_file(settings: Settings) -> None:
    """Rewrite Redis's append-only file now and wait for it. Redis rewrites it by itself once it has doubled,
    in a forked child that takes a whole core for seconds; a rebuild writes enough to set that off at a
    random moment, inside or outside the timed phases. Compacted first, it is not set off by this run."""
    client = aioredis.from_url(settings.redis_url)
    try:
        if (await client.config_get("appendonly")).get("appendonly") != "yes":
            return
        with progress.status("compacting Redis's append-only file"):
            while True:
                persistence = await client.info("persistence")
                if not (persistence["aof_rewrite_in_progress"] or persistence["aof_rewrite_scheduled"]):
                    break
                await asyncio.sleep(0.2)
            await client.bgrewriteaof()
            while (await client.info("persistence"))["aof_rewrite_in_progress"]:
                await asyncio.sleep(0.2)
    finally:
        await client.aclose()


@dataclasses.dataclass(frozen=True)
class RebuildSpeed:
    events: int
    keys: int
    partitions: int
    raw_before: float  # events/s of the raw read before the rebuild
    raw_after: float  # and after it
    building: float  # events/s of the rebuild's building phase
    whole: float  # events/s of the whole command: the switch, the grace and dropping the old generation

    @property
    def raw(self) -> float:
        """A raw read takes a second or two, so one read swings with the machine's other work: two, around
        the rebuild, and their mean."""
        return (self.raw_before + self.raw_after) / 2


async def measure(events: int, keys: int, *, quiet: bool = False) -> RebuildSpeed:
    """Produce ``events`` events over ``keys`` keys into a topic of their own, then time raw reads around
    `ams rebuild redis` of that topic; everything it made is removed afterwards."""
    base = get_settings()
    run = uuid.uuid4().hex[:8]
    settings = dataclasses.replace(base, events_topic=f"ams.bench.rebuild.{run}", redis_prefix=f"bench-{run}")
    admin = AIOKafkaAdminClient(**settings.kafka.client_options())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(settings.events_topic, settings.partitions, 1)])
        await produce(settings, events, keys)
        await compact_append_only_file(settings)
        before = await raw_read(settings, events)
        started = time.perf_counter()
        state = await rebuild_redis(settings, quiet=quiet)
        whole = state.applied / (time.perf_counter() - started)
        after = await raw_read(settings, events)
        return RebuildSpeed(events, keys, settings.partitions, before, after, state.events_per_second, whole)
    finally:
        await admin.delete_topics([settings.events_topic])
        await kafka_clients.stop(admin)
        client = aioredis.from_url(settings.redis_url)
        for generation in range(3):
            await drop_generation(client, RedisLayout(settings.redis_prefix, generation), quiet=True)
        async for name in client.scan_iter(match=f"{settings.redis_prefix}:*"):
            await client.unlink(name)
        await client.aclose()


async def main(events: int, keys: int) -> None:
    speed = await measure(events, keys)
    console.print(f"[bold]bench.rebuild[/bold] {events:,} events, {keys:,} keys, {speed.partitions} partitions")
    console.print(f"  raw aiokafka read          : {speed.raw:>10,.0f} events/s "
                  f"(mean of {speed.raw_before:,.0f} before the rebuild and {speed.raw_after:,.0f} after it)")
    console.print(f"  rebuild, building phase    : {speed.building:>10,.0f} events/s "
                  f"({speed.building / speed.raw:.2f}x raw; target >= 0.25x)")
    console.print(f"  rebuild, whole command     : {speed.whole:>10,.0f} events/s "
                  f"(with the switch, a {GRACE_SECONDS:g}s grace and dropping the old generation)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=100_000)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.events, arguments.keys))
