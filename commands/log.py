"""Appending events to the log: the only way anything is written in AMS.

Single events go through an idempotent producer (``acks=all``): a network retry never duplicates them.
A batch goes through a transactional producer, so all of its events become visible to the
(read-committed) projections together, or none do.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.producer.transaction_manager import TransactionState

from ams import kafka_clients
from ams.settings import KafkaAccess
from commands.envelope import STREAM_APPEND, Event, encode
from commands.keys import Position, kafka_key, partition_for, stream_key

T = TypeVar("T")


def record_key(event: Event) -> bytes:
    return stream_key(event.tenant, event.key) if event.type == STREAM_APPEND else kafka_key(event.tenant, event.key)


class LogUnavailable(Exception):
    """Kafka did not acknowledge an append in time, or refused it: the event may or may not be in the log."""

    def __init__(self, message: str, *, timed_out: bool) -> None:
        super().__init__(message)
        self.timed_out = timed_out


def _forget_outcome(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so that a late failure is not reported as never retrieved


def producer_settings(kafka: KafkaAccess, max_request_size: int = 8 << 20) -> dict[str, Any]:
    """What every producer of the log is made with: the gateway's, and the raw floor `make bench` measures.

    No linger: a lone append goes out at once (``linger_ms=1`` cost about 2 ms per append here), and appends
    that arrive while one is in flight are batched by the producer anyway."""
    return {**kafka.client_options(), "acks": "all", "max_request_size": max_request_size}


class EventLog:
    def __init__(self, kafka: KafkaAccess, topic: str, *, transactional_id: str, max_request_size: int = 8 << 20,
                 timeout: float = 5.0) -> None:
        """``transactional_id`` must be unique per gateway replica and stable across its restarts: a restarted
        gateway then fences its predecessor, and a batch transaction it left open is aborted at once instead of
        holding the partitions' last stable offset (and every strong write) until the transaction timeout."""
        self.kafka = kafka
        self.topic = topic
        self.transactional_id = transactional_id
        self.max_request_size = max_request_size
        self.timeout = timeout  # how long an append may wait for Kafka (LogUnavailable after it)
        self.partitions = 0
        self._transaction_lock = asyncio.Lock()

    async def _bounded(self, work: Awaitable[T], what: str) -> T:
        """Await ``work`` for at most ``timeout`` seconds. On timeout the work goes on in the background (a
        send cannot be taken back once handed to the producer); the caller learns it may still land."""
        task = asyncio.ensure_future(work)
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.timeout)
        except TimeoutError:
            task.add_done_callback(_forget_outcome)
            raise LogUnavailable(f"Kafka did not acknowledge {what} within {self.timeout:g}s",
                                 timed_out=True) from None
        except KafkaError as error:
            raise LogUnavailable(f"Kafka refused {what}: {error!r}", timed_out=False) from None

    async def start(self) -> None:
        # Clients are made here, not in __init__: aiokafka binds them to the running event loop.
        self._common = producer_settings(self.kafka, self.max_request_size)
        self._producer = AIOKafkaProducer(enable_idempotence=True, **self._common)
        self._transactional = AIOKafkaProducer(transactional_id=self.transactional_id, **self._common)
        self._offsets_reader = AIOKafkaConsumer(**self.kafka.client_options(), enable_auto_commit=False,
                                                isolation_level="read_committed")
        self._written_reader = AIOKafkaConsumer(**self.kafka.client_options(), enable_auto_commit=False)
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
        await kafka_clients.stop(self._producer)
        await kafka_clients.stop(self._transactional)
        await kafka_clients.stop(self._offsets_reader)
        await kafka_clients.stop(self._written_reader)

    def partition_of(self, event: Event) -> int:
        return partition_for(record_key(event), self.partitions)

    async def append(self, event: Event) -> Position:
        """Append one event; returns its position once every in-sync replica has it.

        Raises LogUnavailable when Kafka does not acknowledge it within ``timeout`` seconds."""
        send = self._producer.send_and_wait(
            self.topic, encode(event), key=record_key(event), partition=self.partition_of(event)
        )
        metadata = await self._bounded(send, "the append")
        return Position(metadata.partition, metadata.offset)

    async def append_atomically(self, events: Sequence[Event]) -> list[Position]:
        """Append all events in one Kafka transaction: readers see all of them or none.

        Raises LogUnavailable when the transaction is not committed within ``timeout`` seconds (it may still
        commit, or abort)."""
        return await self._bounded(self._transaction(events), "the batch's transaction")

    async def _transaction(self, events: Sequence[Event]) -> list[Position]:
        async with self._transaction_lock:
            if _failed_fatally(self._transactional):
                await self._new_transactional_producer()
            return await self._send_in_transaction(events)

    async def _new_transactional_producer(self) -> None:
        """aiokafka's transactional producer never leaves a fatal error (one a broker restart can cause): every
        later transaction would fail. A new one with the same transactional id fences the old and carries on."""
        failed, self._transactional = self._transactional, AIOKafkaProducer(
            transactional_id=self.transactional_id, **self._common)
        await kafka_clients.stop(failed)
        await self._transactional.start()

    async def _send_in_transaction(self, events: Sequence[Event]) -> list[Position]:
        async with self._transactional.transaction():
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

    async def end_offset(self, topic: str) -> int:
        """The committed head of another topic of one partition (the sandbox registry)."""
        return (await self._ends(self._offsets_reader, [TopicPartition(topic, 0)]))[0]

    async def _ends(self, reader: AIOKafkaConsumer, partitions: list[TopicPartition] | None = None) -> dict[int, int]:
        partitions = partitions or [TopicPartition(self.topic, partition) for partition in range(self.partitions)]
        try:
            ends = await asyncio.wait_for(reader.end_offsets(partitions), self.timeout)
        except TimeoutError:
            raise LogUnavailable(f"Kafka did not answer within {self.timeout:g}s", timed_out=True) from None
        except KafkaError as error:
            raise LogUnavailable(f"Kafka refused to name the log's end offsets: {error!r}", timed_out=False) from None
        return {tp.partition: offset for tp, offset in ends.items()}


def _failed_fatally(producer: AIOKafkaProducer) -> bool:
    manager = getattr(producer, "_txn_manager", None)  # aiokafka exposes no public way to ask
    return manager is not None and manager.state == TransactionState.FATAL_ERROR
