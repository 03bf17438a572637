"""Reading one partition of the log from an offset up to its current end, outside the worker's consumer.

A projection that recovers a partition catches up through this reader instead of seeking its worker's
consumer backwards: records the consumer has already buffered would otherwise reach the projector
before the re-read ones, and be applied out of order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiokafka import AIOKafkaConsumer, TopicPartition

from ams import kafka_clients
from ams.settings import KafkaAccess
from projections.projector import LogRecord

FETCH_MAX = 1000


class PartitionReader:
    def __init__(self, kafka: KafkaAccess, topic: str) -> None:
        self.kafka, self.topic = kafka, topic

    async def read(self, partition: int, start: int, end: int | None = None) -> AsyncIterator[list[LogRecord]]:
        """Committed records of ``partition`` from ``start`` up to ``end`` (exclusive; None: the end it had when
        called), in batches."""
        # auto_offset_reset="none": an offset the broker does not know raises; it never jumps to the log's end,
        # which would end the read at once as if the stretch held no record.
        consumer = AIOKafkaConsumer(**self.kafka.client_options(), enable_auto_commit=False,
                                    isolation_level="read_committed", max_poll_records=FETCH_MAX,
                                    auto_offset_reset="none")
        try:
            await consumer.start()
            tp = TopicPartition(self.topic, partition)
            consumer.assign([tp])
            log_end = (await consumer.end_offsets([tp]))[tp]
            end = log_end if end is None else min(end, log_end)
            consumer.seek(tp, start)
            while await consumer.position(tp) < end:
                fetched = (await consumer.getmany(tp, timeout_ms=1000, max_records=FETCH_MAX)).get(tp, [])
                batch = [record for record in fetched if record.offset < end]
                if batch:
                    yield batch
        finally:
            await kafka_clients.stop(consumer)
