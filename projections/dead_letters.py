"""The dead-letter topic: where records that no projection can apply go, with their position and why."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

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
    def __init__(self, bootstrap: str, dlq_topic: str, source_topic: str) -> None:
        self.dlq_topic = dlq_topic
        self.source_topic = source_topic
        self.bootstrap = bootstrap
        self._producer: AIOKafkaProducer | None = None

    async def _started_producer(self) -> AIOKafkaProducer:
        # Created on first use: aiokafka binds a producer to the running event loop.
        if self._producer is None:
            producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True,
                                        max_request_size=16 << 20)
            await producer.start()
            self._producer = producer
        return self._producer

    async def send(self, letters: Sequence[DeadLetter], projection: str) -> None:
        producer = await self._started_producer()
        futures = []
        for letter in letters:
            position = f"{self.source_topic}:{letter.partition}:{letter.offset}"
            about = {"topic": self.source_topic, "partition": letter.partition, "offset": letter.offset,
                     "reason": letter.reason, "projection": projection}
            headers = [*letter.headers, ("ams.dead_letter", orjson.dumps(about))]
            futures.append(await producer.send(
                self.dlq_topic, value=letter.value, key=position.encode(), headers=list(headers)))
        for future in futures:
            await future

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
