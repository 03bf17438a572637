"""Kafka's own floor under a write: raw aiokafka with the gateway's producer settings, on a topic of its own.

- ``send``: one ``send_and_wait`` (acks=all, idempotent): the floor of an eventual write, acknowledged
  once Kafka has it.
- ``send_and_consume``: the same send, then until a read_committed consumer (as a projection reads) has
  the record: the floor of a strong write, which answers once the projection applied it. The time is
  the later of the acknowledgement and the delivery, as for a strong write, which needs both.
- ``sends_at``: ``send_and_wait`` from many tasks at once, for a fixed time: the floor of write throughput.

The topic is made like the event log (partitions, configuration) and deleted afterwards, so the
projections never see these records.

The clients run on an event loop of their own, on a thread of their own, and each call is timed there: the
bench's HTTP client blocks its thread for each request, and a consumer whose loop is blocked stops
fetching (interleaved with HTTP calls on one loop, the produce -> consume floor's p99 read 500 ms, aiokafka's
fetch wait, against 36 ms on its own).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ams import kafka_clients
from ams.settings import Settings
from bench.common import Latencies
from commands.envelope import PUT, Event, encode, now_ms, uuid7
from commands.keys import kafka_key
from commands.log import producer_settings
from compose.readiness import log_topic_configs

T = TypeVar("T")


class LoopThread:
    """An event loop running on a thread of its own, for clients that must keep working while the caller's
    thread blocks."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="bench kafka floor", daemon=True)
        self._thread.start()

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` on this thread's loop; the caller's loop waits without blocking."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self.loop))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class KafkaFloor:
    """Made and used on the floor's own loop (`kafka_floor` and `FloorCalls` see to that)."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings, self.topic = settings, topic
        self.producer = AIOKafkaProducer(enable_idempotence=True, **producer_settings(settings.kafka))
        self.consumer = AIOKafkaConsumer(**settings.kafka.client_options(), enable_auto_commit=False,
                                         isolation_level="read_committed")
        self._count = 0

    def _record(self) -> tuple[bytes, bytes]:
        """A kv.put event like the gateway appends (a small value), and its record key."""
        self._count += 1
        key = f"floor:{self._count % 1000}"
        event = Event(PUT, "bench-floor", key, {"step": self._count, "note": "x" * 64}, id=uuid7(), ts=now_ms(),
                      actor="bench")
        return encode(event), kafka_key(event.tenant, key)

    async def send(self) -> float:
        """One send; its time in milliseconds."""
        value, key = self._record()
        began = time.perf_counter()
        await self.producer.send_and_wait(self.topic, value, key=key)
        return (time.perf_counter() - began) * 1000

    async def send_and_consume(self) -> float:
        """One send, until the consumer has it; its time in milliseconds."""
        value, key = self._record()
        began = time.perf_counter()
        sent = await self.producer.send_and_wait(self.topic, value, key=key)
        while True:
            record = await self.consumer.getone()
            if (record.partition, record.offset) == (sent.partition, sent.offset):
                return (time.perf_counter() - began) * 1000

    async def sends_at(self, concurrency: int, seconds: float) -> tuple[float, Latencies]:
        """Sends per second with ``concurrency`` tasks each sending one record at a time, and their latencies."""
        latencies = Latencies(f"raw aiokafka send_and_wait x{concurrency}")
        deadline = time.perf_counter() + seconds

        async def sender() -> None:
            while time.perf_counter() < deadline:
                latencies.samples.append(await self.send())

        began = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        return len(latencies.samples) / (time.perf_counter() - began), latencies


class FloorCalls:
    """The floor's calls, made from another loop: each runs on the floor's own loop."""

    def __init__(self, floor: KafkaFloor, thread: LoopThread) -> None:
        self._floor, self._thread = floor, thread

    async def send(self) -> float:
        return await self._thread.run(self._floor.send())

    async def send_and_consume(self) -> float:
        return await self._thread.run(self._floor.send_and_consume())

    async def sends_at(self, concurrency: int, seconds: float) -> tuple[float, Latencies]:
        return await self._thread.run(self._floor.sends_at(concurrency, seconds))


@asynccontextmanager
async def kafka_floor(settings: Settings) -> AsyncIterator[FloorCalls]:
    """The floor on a new topic shaped like the event log, on a loop of its own; the topic is deleted when the
    block ends."""
    thread = LoopThread()
    topic = f"ams.bench.floor.{uuid.uuid4().hex[:8]}"
    floor = await thread.run(_started_floor(settings, topic))
    try:
        yield FloorCalls(floor, thread)
    finally:
        await thread.run(_stopped_floor(settings, floor))
        thread.close()


async def _started_floor(settings: Settings, topic: str) -> KafkaFloor:
    admin = AIOKafkaAdminClient(**settings.kafka.client_options())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, settings.partitions, 1, topic_configs=log_topic_configs())])
    finally:
        await kafka_clients.stop(admin)
    floor = KafkaFloor(settings, topic)
    await floor.producer.start()
    await floor.consumer.start()
    kafka_clients.fetch_when_drained(floor.consumer)  # as the projections' consumers are
    await floor.producer.partitions_for(topic)  # the new topic's metadata, before seeking in it
    partitions = [TopicPartition(topic, partition) for partition in range(settings.partitions)]
    floor.consumer.assign(partitions)
    await floor.consumer.seek_to_end(*partitions)
    return floor


async def _stopped_floor(settings: Settings, floor: KafkaFloor) -> None:
    await kafka_clients.stop(floor.producer)
    await kafka_clients.stop(floor.consumer)
    admin = AIOKafkaAdminClient(**settings.kafka.client_options())
    await admin.start()
    try:
        await admin.delete_topics([floor.topic])
    finally:
        await kafka_clients.stop(admin)
