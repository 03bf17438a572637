"""Rebuilding the PostgreSQL projection in a schema beside the live one, and swapping it in under a live worker."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import TopicPartition

from ams.settings import Settings
from projections.dead_letters import DeadLetters
from projections.postgres import PostgresSink, record_from_row
from projections.projector import Projector, Reseek
from replay.catch_up import started_consumer
from replay.rebuild_postgres import rebuild_postgres, schema_names
from tests.replay.digests import (
    drop_schema,
    kill_rebuild_midway,
    last_offsets,
    postgres_digest,
    reference_postgres,
    wait_postgres_caught_up,
    with_schema,
)
from tests.replay.test_rebuild import history_of_writes
from tests.support import fold_log_for

pytestmark = pytest.mark.stack


class LiveWorker:
    """The live projection worker's loop (Projector + PostgresSink), in small batches, so that many of them
    straddle the schema swap; it keeps one connection pool, with asyncpg's prepared statements, throughout."""

    def __init__(self, settings: Settings, schema: str) -> None:
        self.settings = settings
        self.sink = PostgresSink(settings.postgres_dsn, schema, settings.partitions)
        self.projector = Projector(self.sink, DeadLetters(settings.kafka, settings.dlq_topic,
                                                          settings.events_topic), settings.default_tenant,
                                   max_value_bytes=settings.max_value_bytes)
        self.batches = 0
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        consumer = await started_consumer(self.settings)
        try:
            await self.projector.load_checkpoints()
            partitions = [TopicPartition(self.settings.events_topic, p) for p in range(self.settings.partitions)]
            consumer.assign(partitions)
            for tp in partitions:
                consumer.seek(tp, self.projector.resume_offset(tp.partition))
            while True:
                if self.stopping.is_set():  # (asking for the log's end costs a round trip: only when stopping)
                    ends = await consumer.end_offsets(partitions)
                    if all([await consumer.position(tp) >= ends[tp] for tp in partitions]):
                        return
                batch = await consumer.getmany(timeout_ms=50, max_records=5)
                records = [record for tp_records in batch.values() for record in tp_records]
                try:
                    await self.projector.handle(records)
                except Reseek as reseek:
                    for partition, offset in reseek.offsets.items():
                        consumer.seek(TopicPartition(self.settings.events_topic, partition), offset)
                self.batches += bool(records)
        finally:
            await consumer.stop()
            await self.projector.dead_letters.close()

    async def close(self) -> None:
        await self.sink.close()


async def current_rows(settings: Settings, schema: str, tenant: str) -> dict[str, Any]:
    connection = await asyncpg.connect(settings.postgres_dsn)
    try:
        await connection.set_type_codec("json", schema="pg_catalog", encoder=bytes, decoder=bytes, format="binary")
        rows = await connection.fetch(f'SELECT * FROM "{schema}".kv_current WHERE tenant = $1', tenant)
        return {row["key"]: record_from_row(row) for row in rows}
    finally:
        await connection.close()


async def write_steadily(api: httpx.AsyncClient, stop: asyncio.Event) -> int:
    step = 0
    while not stop.is_set():
        step += 1
        assert (await api.put(f"/v1/kv/steady{step % 5}", json={"step": step})).status_code == 200
    return step


async def test_a_live_worker_writing_through_the_swap_lands_in_the_new_schema_and_loses_nothing(
    api: httpx.AsyncClient, settings: Settings, tenant: str
) -> None:
    live = f"rbt_{uuid.uuid4().hex[:10]}"
    private = with_schema(settings, live)
    await history_of_writes(api)
    await reference_postgres(settings, live, await last_offsets(settings, settings.events_topic))  # the bulk, fast
    worker = LiveWorker(private, live)
    running = asyncio.create_task(worker.run())
    stop = asyncio.Event()
    writes = asyncio.create_task(write_steadily(api, stop))
    try:
        await wait_postgres_caught_up(private, live)
        pool = await worker.sink.pool()
        state = await rebuild_postgres(private, quiet=True)
        assert state.state == "done", state
        batches_at_swap = worker.batches
        await asyncio.sleep(1.0)  # the worker keeps applying the writes that keep coming
        stop.set()
        assert await writes > 0
        worker.stopping.set()
        await asyncio.wait_for(running, 60)
        assert worker.batches > batches_at_swap, "the live worker applied nothing after the swap"
        assert await worker.sink.pool() is pool  # the same connections (and prepared statements) throughout

        _, building, retired = schema_names(private)
        connection = await asyncpg.connect(settings.postgres_dsn)
        try:
            names = {row["nspname"] for row in await connection.fetch("SELECT nspname FROM pg_namespace")}
        finally:
            await connection.close()
        assert live in names and building not in names and retired not in names

        checkpoints = await wait_postgres_caught_up(private, live)
        await reference_postgres(settings, f"{live}_ref", checkpoints)
        assert await postgres_digest(settings, live) == await postgres_digest(settings, f"{live}_ref")
        expected = {key: record for key, record in (await fold_log_for(settings, tenant)).items() if record}
        assert await current_rows(settings, live, tenant) == expected
    finally:
        stop.set()
        running.cancel()
        await asyncio.gather(writes, running, return_exceptions=True)
        await worker.close()
        for schema in (live, f"{live}_ref", *schema_names(private)[1:]):
            await drop_schema(settings, schema)


async def test_the_live_schema_rebuilt_equals_what_it_held_and_reads_stay_correct_meanwhile(
    api: httpx.AsyncClient, settings: Settings, tenant: str
) -> None:
    await history_of_writes(api)
    await wait_postgres_caught_up(settings, settings.postgres_schema)
    before = await postgres_digest(settings, settings.postgres_schema)
    history = (await api.get("/v1/kv/k1/history", params={"order": "oldest"})).json()
    stop = asyncio.Event()

    async def read_during_the_rebuild() -> int:
        reads = 0
        while not stop.is_set():
            reads += 1
            assert (await api.get("/v1/kv/k1/history", params={"order": "oldest"})).json() == history
            await asyncio.sleep(0.01)
        return reads

    reading = asyncio.create_task(read_during_the_rebuild())
    state = await rebuild_postgres(settings, quiet=True)
    stop.set()
    assert await reading > 0 and state.state == "done"
    assert state.applied > 0 and state.events_per_second > 0
    assert await postgres_digest(settings, settings.postgres_schema) == before
    expected = {key: record for key, record in (await fold_log_for(settings, tenant)).items() if record}
    assert await current_rows(settings, settings.postgres_schema, tenant) == expected

    written = await api.put("/v1/kv/after", json="swap")  # the live worker writes into the new schema
    position = written.json()["position"]
    after = await api.get("/v1/kv/after/history", headers={"X-AMS-Min-Position": position})
    assert after.status_code == 200 and after.json()["entries"][0]["state"]["value"] == "swap", after.text


async def test_a_postgres_rebuild_killed_midway_leaves_the_live_schema_untouched_and_resumes(
    api: httpx.AsyncClient, settings: Settings, tenant: str
) -> None:
    await history_of_writes(api)
    await wait_postgres_caught_up(settings, settings.postgres_schema)
    before = await postgres_digest(settings, settings.postgres_schema)
    await kill_rebuild_midway(settings, "postgres")
    assert await postgres_digest(settings, settings.postgres_schema) == before  # untouched, or already swapped
    assert (await api.get("/v1/kv/k1/history")).status_code == 200

    state = await rebuild_postgres(settings, quiet=True)  # resumes the schema it left
    assert state.state == "done"
    assert await postgres_digest(settings, settings.postgres_schema) == before
