"""Kafka's own floor under a write: raw aiokafka with the gateway's producer settings, on a topic of its own.

- ``send``: one ``send_and_wait`` (acks=all, idempotent): the floor of an eventual write, acknowledged
  once Kafka has it.
- ``send_and_consume``: the same send, then until a read_committed consumer (as a projection reads) has
  the record: the floor of a strong write, which answers once the projection applied it. The time is
  the later of the acknowledgement and the delivery, as for a strong write, which needs both.
- ``sends_at``: ``send_and_wait`` from many tasks at once, for a fixed time: the floor of write throughput.

The topic is made like the event log (partitions, configuration) and deleted afterwards, so the
projections never see these records.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ams import kafka_clients
from ams.settings import Settings
from bench.common import Latencies
from commands.envelope import PUT, Event, encode, now_ms, uuid7
from commands.keys import kafka_key
from commands.log import producer_settings
from compose.readiness import log_topic_configs


class KafkaFloor:
    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings, self.topic = settings, topic
        self.producer = AIOKafkaProducer(enable_idempotence=True, **producer_settings(settings.kafka_bootstrap))
        self.consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                         isolation_level="read_committed")
        self._count = 0

    def _record(self) -> tuple[bytes, bytes]:
        """A kv.put event like the gateway appends (a small value), and its record key."""
        self._count += 1
        key = f"floor:{self._count % 1000}"
        event = Event(PUT, "bench-floor", key, {"step": self._count, "note": "x" * 64}, id=uuid7(), ts=now_ms(),
                      actor="bench")
        return encode(event), kafka_key(event.tenant, key)

    async def send(self) -> None:
        value, key = self._record()
        await self.producer.send_and_wait(self.topic, value, key=key)

    async def send_and_consume(self) -> None:
        value, key = self._record()
        sent = await self.producer.send_and_wait(self.topic, value, key=key)
        while True:
            record = await self.consumer.getone()
            if (record.partition, record.offset) == (sent.partition, sent.offset):
                return

    async def sends_at(self, concurrency: int, seconds: float) -> tuple[float, Latencies]:
        """Sends per second with ``concurrency`` tasks each sending one record at a time, and their latencies."""
        latencies = Latencies(f"raw aiokafka send_and_wait x{concurrency}")
        deadline = time.perf_counter() + seconds

        async def sender() -> None:
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                await self.send()
                latencies.samples.append((time.perf_counter() - began) * 1000)

        began = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        return len(latencies.samples) / (time.perf_counter() - began), latencies


@asynccontextmanager
async def kafka_floor(settings: Settings) -> AsyncIterator[KafkaFloor]:
    """A KafkaFloor on a new topic shaped like the event log; the topic is deleted when the block ends."""
    topic = f"ams.bench.floor.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, settings.partitions, 1, topic_configs=log_topic_configs())])
        floor = KafkaFloor(settings, topic)
        await floor.producer.start()
        await floor.consumer.start()
        try:
            await floor.producer.partitions_for(topic)  # the new topic's metadata, before seeking in it
            partitions = [TopicPartition(topic, partition) for partition in range(settings.partitions)]
            floor.consumer.assign(partitions)
            await floor.consumer.seek_to_end(*partitions)
            yield floor
        finally:
            await kafka_clients.stop(floor.producer)
            await kafka_clients.stop(floor.consumer)
    finally:
        await admin.delete_topics([topic])
        await kafka_clients.stop(admin)
