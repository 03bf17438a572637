"""Feeding a projection from the log: the one loop that drives a `Projector`, live or in a sandbox.

The loop asks its aiokafka consumer for whatever has arrived (``getmany``), which returns as soon as any
record is there: a lone event is applied at once, and while the projector works the next batch piles up in
the consumer's fetch buffer, so a busy projection batches by itself. Between batches (and at least every
``CHECK_SECONDS`` when idle) the same loop checks that the store still holds what it applied, moves idle
partitions' checkpoints over transaction markers, and commits the checkpoints to Kafka as offsets (a hint
for tools that read a group's lag: the sinks' checkpoints are what decides). Everything runs on one task,
so a seek never races a batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from projections.projector import LogRecord, Projector, Reseek

log = logging.getLogger("ams.projector")

BATCH_MAX = 2000  # records handed to the projector at most at once
IDLE_POLL_MS = 1000  # how long one getmany waits when nothing arrives
CHECK_SECONDS = 1.0  # how often the store is checked for lost data (Redis may lose it by itself)
SETTLE_IDLE_SECONDS = 2.0  # a partition idle this long has its checkpoint moved over a trailing marker
FAILED_BATCH_PAUSE = 1.0


class Feed:
    def __init__(self, projector: Projector, consumer: AIOKafkaConsumer, topic: str, *, group: bool) -> None:
        """``group``: the consumer is a member of a consumer group (partitions assigned by Kafka, offsets
        committed); otherwise it was assigned its partitions by hand."""
        self.projector, self.consumer, self.topic, self.group = projector, consumer, topic, group
        self._committed: dict[int, int] = {}

    def partitions(self) -> set[int]:
        """The partitions of the topic this consumer reads now (assigned by its group, or by hand)."""
        return {tp.partition for tp in self.consumer.assignment() if tp.topic == self.topic}

    async def begin(self, partitions: set[int]) -> None:
        """Start projecting ``partitions`` (newly assigned): from the store's own checkpoints, after restoring
        what the store lost. Kafka's committed offsets are only a hint."""
        offsets = await self.projector.take_partitions(partitions)
        self.seek(offsets)
        if offsets:
            log.info("%s projection: partitions %s resume from %s", self.projector.label, sorted(offsets), offsets)

    def seek(self, offsets: dict[int, int]) -> None:
        assigned = self.partitions()
        for partition, offset in offsets.items():
            if partition in assigned:  # a partition revoked meanwhile is another worker's now
                self.consumer.seek(TopicPartition(self.topic, partition), offset)

    async def run(self) -> None:
        """Project until cancelled. A failure is logged and retried, never the end of the loop."""
        checked = time.monotonic()
        while True:
            try:
                fetched = await self.consumer.getmany(timeout_ms=IDLE_POLL_MS, max_records=BATCH_MAX)
                if fetched:
                    await self._handle({tp.partition: records for tp, records in fetched.items()})
                if time.monotonic() - checked >= CHECK_SECONDS:
                    checked = time.monotonic()
                    await self.check()
            except asyncio.CancelledError:
                raise
            except Reseek as reseek:
                self.seek(reseek.offsets)
            except Exception as error:  # noqa: BLE001 - a loop that ended would leave its partitions unprojected
                log.warning("%s projection: reading the log failed (%r); trying again in %.0fs", self.projector.label,
                            error, FAILED_BATCH_PAUSE)
                await asyncio.sleep(FAILED_BATCH_PAUSE)

    async def _handle(self, by_partition: Mapping[int, Sequence[LogRecord]]) -> None:
        try:
            await self.projector.handle_partitions(by_partition)
        except (Reseek, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("%s projection: failed to apply a batch; re-reading it from the checkpoint",
                          self.projector.label)
            await asyncio.sleep(FAILED_BATCH_PAUSE)
            await self.projector.load_checkpoints()
            self.seek({partition: self.projector.resume_offset(partition) for partition in by_partition})

    async def check(self) -> None:
        """Flush what the sink holds, recover partitions whose store lost data, settle idle ones, and commit the
        checkpoints."""
        ours = self.partitions()
        try:
            await self.projector.write_held()
            for partition in await self.projector.recover_incomplete(ours, unless_busy=True):
                self.seek({partition: self.projector.resume_offset(partition)})
            positions = {partition: await self.consumer.position(TopicPartition(self.topic, partition))
                         for partition in sorted(ours)}
            await self.projector.settle(positions, idle=SETTLE_IDLE_SECONDS)
        except Reseek:
            raise
        except Exception as error:  # noqa: BLE001 - the next check tries again; the worker must keep running
            log.error("%s projection: checking the store for lost data failed (%r); retrying in %.0fs",
                      self.projector.label, error, CHECK_SECONDS)
        await self._commit(ours)

    async def _commit(self, ours: set[int]) -> None:
        moved = {partition: self.projector.resume_offset(partition) for partition in ours
                 if self.projector.resume_offset(partition) != self._committed.get(partition)
                 and self.projector.resume_offset(partition) > 0}
        if not moved or not self.group:
            return
        try:
            await self.consumer.commit({TopicPartition(self.topic, p): offset for p, offset in moved.items()})
            self._committed.update(moved)
        except KafkaError as error:  # a rebalance under way: the next check commits again
            log.debug("%s projection: could not commit offsets (%r)", self.projector.label, error)

    def lags(self) -> dict[int, int]:
        """Records in the log not yet applied, per partition this consumer reads."""
        result = {}
        for partition in sorted(self.partitions()):
            highwater = self.consumer.highwater(TopicPartition(self.topic, partition)) or 0
            result[partition] = max(0, highwater - self.projector.resume_offset(partition))
        return result
