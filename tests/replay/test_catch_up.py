"""A `Builder` applies a topic exactly up to a bound, and never leaves the records past it behind.

Real Kafka (a topic of its own) and real Redis (a namespace of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ams.settings import Settings
from commands.envelope import PUT, Event, encode, now_ms
from projections.dead_letters import DeadLetters
from projections.log_reader import PartitionReader
from projections.projector import Projector
from projections.redis_kv import RedisSink
from projections.redis_layout import RedisLayout
from replay.catch_up import Builder, Tracker, progress_display, started_consumer
from replay.rebuild_state import RebuildState

pytestmark = pytest.mark.stack
RECORDS = 10


@contextlib.asynccontextmanager
async def one_partition_topic(settings: Settings) -> AsyncIterator[str]:
    name = f"ams.test.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(**settings.kafka.client_options())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1)])
        yield name
        await admin.delete_topics([name])
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def started_builder(settings: Settings, topic: str) -> AsyncIterator[Builder]:
    """A started `Builder` of ``topic`` into a Redis namespace of its own."""
    layout = RedisLayout(f"test-{uuid.uuid4().hex[:8]}")
    sink = RedisSink(settings.redis_url, layout, partitions=1)
    letters = DeadLetters(settings.kafka, settings.dlq_topic, topic)
    consumer = await started_consumer(settings)
    redis = aioredis.from_url(settings.redis_url)
    try:
        projector = Projector(sink, letters, settings.default_tenant, PartitionReader(settings.kafka, topic))
        tracker = Tracker(RebuildState("catch-up test", 0), redis, layout, progress_display(quiet=True))
        builder = Builder(projector, consumer, topic, 1, tracker)
        await builder.start()
        yield builder
    finally:
        await consumer.stop()
        await letters.close()
        await sink.close()
        await redis.aclose()


@pytest.fixture
async def topic(settings: Settings, tenant: str) -> AsyncIterator[str]:
    async with one_partition_topic(settings) as name:
        producer = AIOKafkaProducer(**settings.kafka.client_options(), acks="all")
        await producer.start()
        try:
            for n in range(RECORDS):
                await producer.send_and_wait(name, encode(Event(PUT, tenant, f"k{n}", n, ts=now_ms())), partition=0)
        finally:
            await producer.stop()
        yield name


async def test_records_fetched_past_the_bound_are_read_again_not_skipped(settings: Settings, topic: str) -> None:
    async with started_builder(settings, topic) as builder:
        await builder.through({0: 3})  # one fetch brings all ten records; six are past the bound
        assert builder.projector.checkpoints[0] == 3
        assert await builder.consumer.position(TopicPartition(topic, 0)) == 4  # not past what was applied

        await builder.to_head()
        assert builder.projector.checkpoints[0] == RECORDS - 1
        assert builder.tracker.state.applied == RECORDS


@pytest.fixture
async def transactional_topic(settings: Settings, tenant: str) -> AsyncIterator[str]:
    """Three records written in one transaction: offsets 0 to 2, and its commit marker at offset 3."""
    async with one_partition_topic(settings) as name:
        producer = AIOKafkaProducer(**settings.kafka.client_options(), transactional_id=name)
        await producer.start()
        try:
            async with producer.transaction():
                for n in range(3):
                    await producer.send(name, encode(Event(PUT, tenant, f"k{n}", n, ts=now_ms())), partition=0)
        finally:
            await producer.stop()
        # The commit returns before the marker is written: wait until readers see the transaction as ended.
        consumer = await started_consumer(settings)
        try:
            tp = TopicPartition(name, 0)
            while (await consumer.end_offsets([tp]))[tp] < 4:
                await asyncio.sleep(0.05)
        finally:
            await consumer.stop()
        yield name


@pytest.mark.parametrize("catch_up", ["to_head", "through the marker"])
async def test_a_partition_ending_with_a_transaction_marker_is_caught_up_over_it(
    settings: Settings, transactional_topic: str, catch_up: str
) -> None:
    """The live worker settles its checkpoint over a trailing marker when idle; a new generation must reach
    that checkpoint too, or a rebuild waiting for it would wait forever."""
    async with started_builder(settings, transactional_topic) as builder:
        async with asyncio.timeout(30):
            if catch_up == "to_head":
                await builder.to_head()
            else:
                await builder.through({0: 3})
        assert builder.projector.checkpoints[0] == 3
        assert (await builder.projector.sink.checkpoints())[0] == 3
        assert builder.tracker.state.applied == 3
