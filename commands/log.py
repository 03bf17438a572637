"""Appending events to the log: the only way anything is written in AMS.

Single events go through an idempotent producer (``acks=all``): a network retry never duplicates them.
A batch goes through a transactional producer, so all of its events become visible to the
(read-committed) projections together, or none do.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from commands.envelope import STREAM_APPEND, Event, encode
from commands.keys import Position, kafka_key, partition_for, stream_key


def record_key(event: Event) -> bytes:
    return stream_key(event.tenant, event.key) if event.type == STREAM_APPEND else kafka_key(event.tenant, event.key)


class EventLog:
    def __init__(self, bootstrap: str, topic: str, *, transactional_id: str, max_request_size: int = 8 << 20) -> None:
        """``transactional_id`` must be unique per gateway replica and stable across its restarts: a restarted
        gateway then fences its predecessor, and a batch transaction it left open is aborted at once instead of
        holding the partitions' last stable offset (and every strong write) until the transaction timeout."""
        self.bootstrap = bootstrap
        self.topic = topic
        self.transactional_id = transactional_id
        self.max_request_size = max_request_size
        self.partitions = 0
        self._transaction_lock = asyncio.Lock()

    async def start(self) -> None:
        # Clients are made here, not in __init__: aiokafka binds them to the running event loop.
        common = {"bootstrap_servers": self.bootstrap, "acks": "all", "max_request_size": self.max_request_size,
                  "linger_ms": 1}
        self._producer = AIOKafkaProducer(enable_idempotence=True, **common)
        self._transactional = AIOKafkaProducer(transactional_id=self.transactional_id, **common)
        self._offsets_reader = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                                isolation_level="read_committed")
        self._written_reader = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await self._producer.start()
        await self._transactional.start()
        await self._offsets_reader.start()
        await self._written_reader.start()
        found = await self._producer.partitions_for(self.topic)
        if not found:
            raise RuntimeError(f"topic {self.topic!r} does not exist; run `ams up` to create it")
        self.partitions = len(found)

    def at(self, topic: str) -> EventLog:
        """The same producers, appending to another topic of the same shape (a sandbox's log)."""
        other = copy.copy(self)
        other.topic = topic
        return other

    async def stop(self) -> None:
        await self._producer.stop()
        await self._transactional.stop()
        await self._offsets_reader.stop()
        await self._written_reader.stop()

    def partition_of(self, event: Event) -> int:
        return partition_for(record_key(event), self.partitions)

    async def append(self, event: Event) -> Position:
        """Append one event; returns its position once every in-sync replica has it."""
        metadata = await self._producer.send_and_wait(
            self.topic, encode(event), key=record_key(event), partition=self.partition_of(event)
        )
        return Position(metadata.partition, metadata.offset)

    async def append_atomically(self, events: Sequence[Event]) -> list[Position]:
        """Append all events in one Kafka transaction: readers see all of them or none."""
        async with self._transaction_lock, self._transactional.transaction():
            futures = [
                await self._transactional.send(self.topic, encode(event), key=record_key(event),
                                               partition=self.partition_of(event))
                for event in events
            ]
            results = [await future for future in futures]
        return [Position(metadata.partition, metadata.offset) for metadata in results]

    async def end_offsets(self) -> dict[int, int]:
        """The offset the next committed event of each partition will get (the log's head)."""
        return await self._ends(self._offsets_reader)

    async def written_offsets(self) -> dict[int, int]:
        """The high watermark of each partition: past every acknowledged write, committed or not yet.

        A batch's commit returns before Kafka has written its commit markers to every partition, so for a
        moment the committed head can lag a position its writer already holds; this one never does."""
        return await self._ends(self._written_reader)

    async def _ends(self, reader: AIOKafkaConsumer) -> dict[int, int]:
        partitions = [TopicPartition(self.topic, partition) for partition in range(self.partitions)]
        return {tp.partition: offset for tp, offset in (await reader.end_offsets(partitions)).items()}
