"""Digests of whole projection stores, reference projections built fresh from the log, and rebuilds killed
mid-way, for rebuild tests."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from dataclasses import replace

import asyncpg
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition

from ams.settings import Settings
from projections.dead_letters import DeadLetters
from projections.log_reader import PartitionReader
from projections.postgres import PostgresSink
from projections.projector import Projector
from projections.redis_layout import RedisLayout
from replay.catch_up import Builder, Tracker, progress_display, started_consumer
from replay.rebuild_state import RebuildState, read_state

SKIPPED_TABLES = ("schema_migrations",)  # when each migration ran: not a projection of the log


async def postgres_digest(settings: Settings, schema: str) -> dict[str, str]:
    """Each table of ``schema``: its row count and the md5 of its rows, in a canonical order."""
    connection = await asyncpg.connect(settings.postgres_dsn)
    try:
        tables = [row["table_name"] for row in await connection.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1 ORDER BY table_name", schema)]
        digests = {}
        for table in tables:
            if table in SKIPPED_TABLES:
                continue
            row = await connection.fetchrow(
                f'SELECT count(*) AS n, md5(coalesce(string_agg(t::text, E\'\\n\' ORDER BY t::text), \'\')) AS digest '
                f'FROM "{schema}"."{table}" t')
            digests[table] = f"{row['n']}:{row['digest']}"
        return digests
    finally:
        await connection.close()


async def postgres_checkpoints(settings: Settings, schema: str) -> dict[int, int]:
    connection = await asyncpg.connect(settings.postgres_dsn)
    try:
        rows = await connection.fetch(f'SELECT partition, log_offset FROM "{schema}".checkpoints '
                                      "WHERE projection = 'postgres'")
        return {row["partition"]: row["log_offset"] for row in rows}
    except asyncpg.UndefinedTableError:
        return {}  # a worker that has not started yet has not created its schema
    finally:
        await connection.close()


async def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """The end of each partition of ``topic`` as readers of committed records see it (past its markers)."""
    consumer = await started_consumer(settings)
    try:
        partitions = [TopicPartition(topic, partition) for partition in range(settings.partitions)]
        return {tp.partition: offset for tp, offset in (await consumer.end_offsets(partitions)).items()}
    finally:
        await consumer.stop()


async def last_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """The offset of the last record (not commit marker) of each partition of ``topic``."""
    consumer = AIOKafkaConsumer(**settings.kafka.client_options(), enable_auto_commit=False,
                                isolation_level="read_committed")
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.partitions)]
        ends = await consumer.end_offsets(partitions)
        last = {}
        for tp in partitions:
            # The last few offsets may be commit markers: read back a little and keep the last record.
            consumer.assign([tp])
            consumer.seek(tp, max(0, ends[tp] - 64))
            found = -1
            while await consumer.position(tp) < ends[tp]:
                for record in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                    if record.offset < ends[tp]:
                        found = record.offset
            if found >= 0:
                last[tp.partition] = found
        return last
    finally:
        await consumer.stop()


async def wait_postgres_caught_up(settings: Settings, schema: str, timeout: float = 60) -> dict[int, int]:
    """Wait until ``schema``'s checkpoints cover every record of the log; return them."""
    target = await last_offsets(settings, settings.events_topic)
    async with asyncio.timeout(timeout):
        while True:
            checkpoints = await postgres_checkpoints(settings, schema)
            if all(checkpoints.get(p, -1) >= offset for p, offset in target.items()):
                return checkpoints
            await asyncio.sleep(0.2)


async def reference_postgres(settings: Settings, schema: str, through: dict[int, int]) -> None:
    """A fresh PostgreSQL projection of the log, exactly through ``through``, in ``schema``."""
    sink = PostgresSink(settings.postgres_dsn, schema, settings.partitions)
    dead_letters = DeadLetters(settings.kafka, settings.dlq_topic, settings.events_topic)
    consumer = await started_consumer(settings)
    redis = aioredis.from_url(settings.redis_url)
    try:
        tracker = Tracker(RebuildState(f"reference-{schema}", 0), redis, RedisLayout(settings.redis_prefix),
                          progress_display(quiet=True))
        projector = Projector(sink, dead_letters, settings.default_tenant,
                              PartitionReader(settings.kafka, settings.events_topic),
                              max_value_bytes=settings.max_value_bytes)
        builder = Builder(projector, consumer, settings.events_topic,
                          settings.partitions, tracker)
        await builder.start()
        await builder.through(through)
    finally:
        await consumer.stop()
        await dead_letters.close()
        await sink.close()
        await redis.aclose()


async def drop_schema(settings: Settings, schema: str) -> None:
    connection = await asyncpg.connect(settings.postgres_dsn)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


def with_schema(settings: Settings, schema: str) -> Settings:
    return replace(settings, postgres_schema=schema)


async def kill_rebuild_midway(settings: Settings, projection: str, timeout: float = 120) -> None:
    """Run `ams rebuild <projection>` and SIGKILL it once it reports events applied and is not done yet: a
    kill that lands mid-way by what the rebuild says, not by a guess at how long it takes."""
    started = time.time()
    process = subprocess.Popen([sys.executable, "-m", "ams.cli", "rebuild", projection], stdout=subprocess.DEVNULL)
    client = aioredis.from_url(settings.redis_url)
    try:
        async with asyncio.timeout(timeout):
            while True:
                state = await read_state(client, RedisLayout(settings.redis_prefix), projection)
                if state is not None and float(state["started"]) >= started:  # type: ignore[arg-type]
                    assert state["state"] != "done", "the rebuild finished before it could be killed mid-way"
                    if int(state["applied"]) > 0:  # type: ignore[call-overload]
                        break
                assert process.poll() is None, f"the rebuild exited early with code {process.returncode}"
                await asyncio.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        await client.aclose()
