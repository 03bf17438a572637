"""Readiness probes that prove a component really works, not just that its port is open."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from ams import kafka_clients
from ams.settings import Settings
from compose import postgres, security

READINESS_TOPIC = "ams.readiness"
DYNAMIC_TOPIC_CONFIG = 1  # DescribeConfigs' source of a setting made on the topic itself


# The largest record batch the log's topics take. A value may be as large as AMS_MAX_VALUE_BYTES (1 MiB)
# and its envelope adds to it, so the broker's default (1 MiB + 12 bytes) would refuse values the gateway
# accepts; this matches the largest request the gateway's producer sends (commands/log.py).
MAX_MESSAGE_BYTES = 8 << 20


def log_topic_configs() -> dict[str, str]:
    """Configuration of the event log and the dead-letter topic: kept forever, large records allowed."""
    return {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete",
            "max.message.bytes": str(MAX_MESSAGE_BYTES)}


async def kafka_topics(settings: Settings) -> None:
    """Create the event log, the embeddings stream and the dead-letter topic (idempotent).

    ``memory.embeddings`` has the log's partition count (a key's operations land in the partition of
    its events) and is kept forever too: vector views are rebuilt from it without re-embedding.
    Topics made by an older version (with the broker's default message size) get today's configuration.
    """
    admin = AIOKafkaAdminClient(**settings.kafka.client_options())
    await admin.start()
    try:
        forever = log_topic_configs()
        topics = [
            NewTopic(settings.events_topic, settings.partitions, 1, topic_configs=forever),
            NewTopic(settings.embeddings_topic, settings.partitions, 1, topic_configs=forever),
            NewTopic(settings.dlq_topic, 1, 1, topic_configs=forever),
            NewTopic(READINESS_TOPIC, 1, 1, topic_configs={"retention.ms": "3600000"}),
            # The registry of sandboxes: one record per sandbox, the newest wins (see replay/sandboxes.py).
            NewTopic(f"{settings.events_topic}.sandboxes", 1, 1, topic_configs={"cleanup.policy": "compact"}),
        ]
        existing = set(await admin.list_topics())
        missing = [topic for topic in topics if topic.name not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
        logs = (settings.events_topic, settings.embeddings_topic, settings.dlq_topic)
        await _update_configs(admin, [name for name in logs if name in existing], forever)
    finally:
        await kafka_clients.stop(admin)


async def _update_configs(admin: AIOKafkaAdminClient, topics: list[str], wanted: dict[str, str]) -> None:
    """Give existing topics the ``wanted`` settings, keeping every other setting made on them (such as
    min.insync.replicas in a cluster)."""
    if not topics:
        return
    described = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name) for name in topics])
    updates = []
    for response in described:
        for _error, _message, _kind, name, entries in response.resources:
            # Entries are (name, value, read only, source, sensitive, synonyms); source 1 is "set on the topic".
            own = {entry[0]: entry[1] for entry in entries if entry[3] == DYNAMIC_TOPIC_CONFIG}
            if any(own.get(key) != value for key, value in wanted.items()):
                updates.append(ConfigResource(ConfigResourceType.TOPIC, name, {**own, **wanted}))
    if updates:
        # AlterConfigs replaces a topic's whole set of own settings: each update carries all of them.
        await admin.alter_configs(updates)


async def kafka_round_trip(settings: Settings) -> None:
    """Produce a record and read it back: the broker accepts writes and serves reads."""
    await kafka_topics(settings)
    marker = uuid.uuid4().hex.encode()
    producer = AIOKafkaProducer(**settings.kafka.client_options(), acks="all")
    await producer.start()
    try:
        sent = await producer.send_and_wait(READINESS_TOPIC, marker)
    finally:
        await kafka_clients.stop(producer)
    consumer = AIOKafkaConsumer(**settings.kafka.client_options(), enable_auto_commit=False)
    await consumer.start()
    try:
        partition = TopicPartition(READINESS_TOPIC, sent.partition)
        consumer.assign([partition])
        consumer.seek(partition, sent.offset)
        batch = await consumer.getmany(partition, timeout_ms=10_000)
        values = [record.value for record in batch.get(partition, [])]
        if marker not in values:
            raise RuntimeError("the record produced for the readiness check was not read back")
    finally:
        await kafka_clients.stop(consumer)


async def redis_ping(settings: Settings) -> None:
    client = aioredis.from_url(settings.redis_url)
    try:
        await client.ping()
    finally:
        await client.aclose()


async def postgres_select(settings: Settings) -> None:
    """SELECT 1 on the server, creating the AMS database on first start."""
    connection = await asyncpg.connect(security.dsn_of(settings.postgres_dsn, "postgres"), timeout=5)
    try:
        await connection.fetchval("SELECT 1")
        if not await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", postgres.DATABASE):
            await connection.execute(f'CREATE DATABASE "{postgres.DATABASE}"')
    finally:
        await connection.close()


async def milvus_list(settings: Settings) -> None:
    """The Milvus endpoint answers a request (listing collections)."""
    from pymilvus import MilvusClient

    from projections.milvus_store import GRPC_OPTIONS

    def probe() -> None:
        # The same channel options as every other client: pymilvus shares one channel per address.
        client = MilvusClient(uri=settings.milvus_endpoint, timeout=5, grpc_options=GRPC_OPTIONS)
        try:
            client.list_collections()
        finally:
            client.close()

    await asyncio.to_thread(probe)


async def http_ok(url: str, uds: Path | None = None) -> None:
    """A GET of ``url`` answers 2xx; with ``uds``, sent over that Unix socket (the URL's host is then unused)."""
    transport = httpx.AsyncHTTPTransport(uds=str(uds)) if uds is not None else None
    async with httpx.AsyncClient(timeout=2, transport=transport) as client:
        response = await client.get(url)
        response.raise_for_status()


async def wait_until(probe_name: str, probe: object, timeout: float, alive: object = None) -> None:
    """Retry ``probe()`` until it succeeds; fail with the last error after ``timeout`` seconds.

    ``alive()`` tells whether the process behind the probe still runs: if it died, waiting is pointless.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        if alive is not None and not alive():  # type: ignore[operator]
            raise RuntimeError(f"{probe_name} exited while starting")
        try:
            await asyncio.wait_for(probe(), timeout=max(1.0, deadline - time.monotonic()))  # type: ignore[operator]
            return
        except Exception as error:  # noqa: BLE001 - any failure means "not ready yet"
            last_error = error
            await asyncio.sleep(0.25)
    raise TimeoutError(f"{probe_name} was not ready after {timeout:.0f}s: {last_error!r}")
