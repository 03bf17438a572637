"""Helpers for tests that talk to the real log and processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from ams.settings import Settings
from commands.envelope import Event, decode
from commands.fold import Outcome, Record, apply, fold


async def read_topic(settings: Settings, topic: str, since: dict[int, int] | None = None) -> list[ConsumerRecord]:
    """Every committed record of ``topic`` from ``since`` (per partition; default: the start) up to the
    current end of each partition."""
    producer = AIOKafkaProducer(**settings.kafka.client_options())
    await producer.start()
    try:
        numbers = sorted(await producer.partitions_for(topic))
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(**settings.kafka.client_options(), enable_auto_commit=False,
                                isolation_level="read_committed", max_partition_fetch_bytes=16 << 20)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, number) for number in numbers]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        firsts = await consumer.beginning_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, max(firsts[tp], (since or {}).get(tp.partition, 0)))
        records: list[ConsumerRecord] = []
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, tp_records in batch.items():
                records.extend(record for record in tp_records if record.offset < ends[tp])
        return records
    finally:
        await consumer.stop()


async def produce_raw(settings: Settings, value: bytes, *, key: bytes | None = None, partition: int | None = None,
                      headers: list[tuple[str, bytes]] | None = None,
                      compression: str | None = None, topic: str | None = None) -> tuple[int, int]:
    """Produce ``value`` as it is into the live log (or ``topic``), as another tool might."""
    producer = AIOKafkaProducer(**settings.kafka.client_options(), acks="all", compression_type=compression,
                                max_request_size=32 << 20)
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic or settings.events_topic, value, key=key, partition=partition,
                                            headers=headers)
        return sent.partition, sent.offset
    finally:
        await producer.stop()


async def fold_log_for(settings: Settings, tenant: str) -> dict[str, Record | None]:
    """The state of each of ``tenant``'s keys according to a fresh fold of the log itself."""
    by_key = await kv_events_by_key(settings, tenant)
    return {key: fold([(logged.event, logged.offset) for logged in events])[0] for key, events in by_key.items()}


@contextlib.asynccontextmanager
async def extra_gateway(settings: Settings, tenant: str, env: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    """A second gateway process with its own settings, and a client of it authenticated as ``tenant``."""
    from tests.conftest import token_for

    port = settings.gateway_port + 50
    process = subprocess.Popen([sys.executable, "-m", "ams.cli", "gateway"],
                               env={**os.environ, **env, "AMS_GATEWAY_PORT": str(port)})
    headers = {"Authorization": f"Bearer {token_for(settings, tenant)}"}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30) as client:
            for _ in range(200):
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
            yield client
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a slow shutdown must not leave it holding the port for the next test
            process.kill()
            process.wait(timeout=10)


def gateway_process_client(settings: Settings, number: int, tenant: str, *scopes: str) -> httpx.AsyncClient:
    """A client of the local stack's gateway process ``number`` alone (through its own Unix socket; on the
    shared port the kernel picks the process), authenticated as ``tenant`` (read and write by default)."""
    from compose.gateways import control_socket
    from tests.conftest import token_for

    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(control_socket(settings, number))),
                             base_url="http://gateway", timeout=30,
                             headers={"Authorization": f"Bearer {token_for(settings, tenant, *scopes)}"})


async def redis_records(settings: Settings, tenant: str, prefix: str | None = None) -> dict[str, Record]:
    """Every record of ``tenant`` in the hot projection, read straight from Redis."""
    from projections.redis_kv import RedisSink
    from projections.redis_layout import RedisLayout

    sink = RedisSink(settings.redis_url, RedisLayout(prefix or settings.redis_prefix), settings.partitions)
    try:
        return await sink.records(tenant)
    finally:
        await sink.close()


async def topic_exists(settings: Settings, topic: str) -> bool:
    producer = AIOKafkaProducer(**settings.kafka.client_options())
    await producer.start()
    try:
        return topic in (await producer.client.fetch_all_metadata()).topics()
    finally:
        await producer.stop()
@dataclass(frozen=True, slots=True)
class Logged:
    """An event as the log has it, with its position."""

    partition: int
    offset: int
    event: Event

    @property
    def position(self) -> str:
        return f"{self.partition}:{self.offset}"


async def kv_events_by_key(settings: Settings, tenant: str) -> dict[str, list[Logged]]:
    """Each of ``tenant``'s keys' events, read from the log itself, in log order."""
    by_key: dict[str, list[Logged]] = {}
    for record in await read_topic(settings, settings.events_topic):
        try:
            event = decode(record.value, record.headers, default_tenant=settings.default_tenant,
                           record_ts=record.timestamp, max_value_bytes=settings.max_value_bytes)
        except ValueError:
            continue
        if event.tenant == tenant and event.type.startswith("kv."):
            by_key.setdefault(event.key, []).append(Logged(record.partition, record.offset, event))
    for events in by_key.values():
        events.sort(key=lambda logged: (logged.offset, logged.partition))
    return by_key


def fold_history(events: list[Logged]) -> list[tuple[Logged, Outcome]]:
    """Each event with the fold's outcome (whose record is the key's state after it)."""
    record: Record | None = None
    history = []
    for logged in events:
        outcome = apply(record, logged.event, logged.offset)
        record = outcome.record
        history.append((logged, outcome))
    return history


def state_after(events: list[Logged], included: Callable[[Logged], bool]) -> Record | None:
    """The key's record after the longest prefix of ``events`` whose every event is ``included``."""
    prefix = []
    for logged in events:
        if not included(logged):
            break
        prefix.append((logged.event, logged.offset))
    return fold(prefix)[0]


async def gateway_metric(gateway_url: str, sample: str) -> float:
    """The value of ``sample`` (a metric's name with its labels, if any) on a gateway's /metrics; 0 if absent."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{gateway_url}/metrics")).text
    prefix = f"{sample} "
    return next((float(line.removeprefix(prefix)) for line in text.splitlines() if line.startswith(prefix)), 0.0)


async def cold_reads(settings: Settings, reason: str) -> float:
    """How many current-value reads the gateway has served from PostgreSQL for ``reason``."""
    return await gateway_metric(settings.gateway_url, f'ams_gateway_cold_reads_total{{reason="{reason}"}}')


def in_log_order(positions: list[str]) -> bool:
    """Whether ``"partition:offset"`` positions list each partition's offsets in increasing order."""
    last: dict[str, int] = {}
    for position in positions:
        partition, offset = position.split(":")
        if int(offset) <= last.get(partition, -1):
            return False
        last[partition] = int(offset)
    return True
