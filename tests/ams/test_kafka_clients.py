"""A task cancelled while it stops an aiokafka client stays cancelled; a consumer fetching when drained never
leaves a partition out of its next fetch."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ams import kafka_clients
from ams.kafka_clients import KafkaClient
from ams.settings import Settings
from replay.catch_up import started_consumer

pytestmark = pytest.mark.stack


async def cancelled_while_stopping(client: KafkaClient, stopping: Callable[[KafkaClient], Awaitable[None]]) -> bool:
    """Cancel a task just after it begins to stop ``client``: True if it ended cancelled, False if it carried on."""
    carried_on = False

    async def stop_then_carry_on() -> None:
        nonlocal carried_on
        await stopping(client)
        carried_on = True

    task = asyncio.create_task(stop_then_carry_on())
    await asyncio.sleep(0)  # the task is inside the stop now
    task.cancel()
    await asyncio.wait([task])
    await asyncio.sleep(0.5)  # the stop itself goes on to its end
    return task.cancelled() and not carried_on


async def test_aiokafka_itself_loses_the_cancellation_which_is_why_clients_are_stopped_through_kafka_clients(
    settings: Settings,
) -> None:
    assert not await cancelled_while_stopping(await started_consumer(settings), lambda client: client.stop())


@pytest.mark.parametrize("kind", ["consumer", "producer", "admin"])
async def test_a_task_cancelled_while_it_stops_a_client_ends_cancelled(settings: Settings, kind: str) -> None:
    client: KafkaClient
    if kind == "consumer":
        client = await started_consumer(settings)
    elif kind == "producer":
        client = AIOKafkaProducer(**settings.kafka.client_options())
        await client.start()
    else:
        client = AIOKafkaAdminClient(**settings.kafka.client_options())
        await client.start()
    assert await cancelled_while_stopping(client, kafka_clients.stop)


async def test_a_consumer_fetching_when_drained_does_not_leave_a_slowly_consumed_partition_out(
    settings: Settings,
) -> None:
    """A record whose partition's previous records were consumed late is fetched at once, not after the
    long poll (5 s here) of a request sent for the other partitions meanwhile, as aiokafka alone does."""
    topic = f"ams.test.drained.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(**settings.kafka.client_options())
    await admin.start()
    await admin.create_topics([NewTopic(topic, 2, 1)])
    producer = AIOKafkaProducer(**settings.kafka.client_options())
    consumer = AIOKafkaConsumer(**settings.kafka.client_options(), fetch_max_wait_ms=5000,
                                isolation_level="read_committed", enable_auto_commit=False)
    await producer.start()
    await consumer.start()
    kafka_clients.fetch_when_drained(consumer)
    try:
        await producer.partitions_for(topic)
        partitions = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        await producer.send_and_wait(topic, b"first", partition=0)
        await asyncio.sleep(0.5)  # fetched, and not consumed for longer than aiokafka's 100 ms prefetch backoff
        assert [record.value for records in (await consumer.getmany(timeout_ms=5000)).values()
                for record in records] == [b"first"]
        await producer.send_and_wait(topic, b"second", partition=0)
        began = time.monotonic()
        second = await consumer.getmany(timeout_ms=10_000)
        assert [record.value for records in second.values() for record in records] == [b"second"]
        assert time.monotonic() - began < 2.5  # not held up by the 5 s long poll of partition 1
    finally:
        await kafka_clients.stop(consumer)
        await kafka_clients.stop(producer)
        await admin.delete_topics([topic])
        await kafka_clients.stop(admin)
