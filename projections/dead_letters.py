"""The dead-letter topic: where records that no projection can apply go, with their position and why."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from ams import kafka_clients
from ams.settings import KafkaAccess

# A dead letter must reach the topic before the checkpoint moves past it: Kafka errors are retried.
DEAD_LETTER_TRANSIENT: tuple[type[BaseException], ...] = (KafkaError,)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    partition: int
    offset: int
    value: bytes | None  # the original bytes, when the record itself is the problem
    headers: Sequence[tuple[str, bytes]]
    reason: str


class DeadLetters:
    def __init__(self, kafka: KafkaAccess, dlq_topic: str, source_topic: str) -> None:
        self.dlq_topic = dlq_topic
        self.source_topic = source_topic
        self.kafka = kafka
        self._producer: AIOKafkaProducer | None = None

    async def _started_producer(self) -> AIOKafkaProducer:
        # Created on first use: aiokafka binds a producer to the running event loop.
        if self._producer is None:
            # Compressed: a poison record may be as large as the log takes, and the letter adds headers.
            producer = AIOKafkaProducer(**self.kafka.client_options(), acks="all", enable_idempotence=True,
                                        max_request_size=16 << 20, compression_type="gzip")
            await producer.start()
            self._producer = producer
        return self._producer

    async def send(self, letters: Sequence[DeadLetter], projection: str) -> None:
        producer = await self._started_producer()
        for letter in letters:
            try:
                await (await self._send(producer, letter, projection, letter.value))
            except MessageSizeTooLargeError:
                # Retrying cannot help and the partition must keep moving: the letter goes without the
                # record's bytes (they stay in the log at the position the letter names).
                note = f"{len(letter.value or b'')} bytes, too large for {self.dlq_topic}; read them from the log"
                await (await self._send(producer, letter, projection, None, note))

    async def _send(self, producer: AIOKafkaProducer, letter: DeadLetter, projection: str, value: bytes | None,
                    value_note: str = "") -> asyncio.Future[object]:
        position = f"{self.source_topic}:{letter.partition}:{letter.offset}"
        about = {"topic": self.source_topic, "partition": letter.partition, "offset": letter.offset,
                 "reason": letter.reason, "projection": projection}
        if value_note:
            about["value_dropped"] = value_note
        headers = [*letter.headers, ("ams.dead_letter", orjson.dumps(about))]
        future: asyncio.Future[object] = await producer.send(self.dlq_topic, value=value, key=position.encode(),
                                                             headers=list(headers))
        return future

    async def close(self) -> None:
        if self._producer is not None:
            await kafka_clients.stop(self._producer)
