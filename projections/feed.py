"""Feeding a projection from the log: the one driver of a `Projector`, with a stop condition.

- ``Feed.run``: for ever (the live worker, a sandbox's follower).
- ``Feed.to_head``: to the head of the log, then to the head it has by then, until little is left (a rebuild,
  a new generation's catch-up).
- ``Feed.through``: exactly up to a bound per partition (the last step of a rebuild: the live checkpoints).
- Any bounded run hands records over in ``Window``s: many records of a partition at once, so a rebuild
  folds a key updated many times once.

``read_before`` is the bounded read under the last three, also used by `ams log export` (`replay.log_io`).

For ever, the loop asks its aiokafka consumer for whatever has arrived (``getmany``), which returns as soon as any
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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from projections.projector import LogRecord, Projector, Reseek

log = logging.getLogger("ams.projector")

BATCH_MAX = 2000  # records handed to the projector at most at once
IDLE_POLL_MS = 1000  # how long one getmany waits when nothing arrives
CHECK_SECONDS = 1.0  # how often the store is checked for lost data (Redis may lose it by itself)
SETTLE_IDLE_SECONDS = 2.0  # a partition idle this long has its checkpoint moved over a trailing marker
FAILED_BATCH_PAUSE = 1.0
FETCH_MAX = 20_000  # records one fetch of a bounded run asks for
FETCH_WAIT_MS = 200
CLOSE_TO_HEAD = 1_000  # a pass to the head that applied at most this many records ends `Feed.to_head`

# Told after each step of a bounded run: records applied by it, records still before the bound.
Progress = Callable[[int, int], Awaitable[None]]


@dataclass(frozen=True)
class Window:
    """When the records fetched of a partition are handed to the projector together (before it reaches its
    bound): once ``records`` of them are waiting, or their values reach ``value_bytes`` (a bound on memory).

    A window of many events reads, folds and writes a key once however many of them it has (`bench.rebuild`,
    1M events over 100,000 keys: 0.30x the raw read, against 0.23x with windows of 10,000 records)."""

    records: int = 100_000
    value_bytes: int = 32 << 20


EACH_FETCH = Window(records=1, value_bytes=1)  # every fetch handed over as it comes


async def read_before(consumer: AIOKafkaConsumer, ends: Mapping[TopicPartition, int],
                      window: Window = EACH_FETCH) -> AsyncIterator[dict[TopicPartition, list[LogRecord]]]:
    """The committed records of each partition from the consumer's position up to ``ends`` (exclusive), a
    window at a time (after each fetch, the windows it completed: possibly none). Between windows the caller
    may seek a partition (back): reading resumes from there.

    Records fetched past an end are not handed over, and the consumer is sought back to the end, so a later
    read of the partition starts with them (a position past them would leave a gap nobody can see). A
    partition is done when its position (which moves over transaction markers too) reaches its end."""
    pending: dict[TopicPartition, list[LogRecord]] = {tp: [] for tp in ends}
    sizes = dict.fromkeys(ends, 0)

    def full(tp: TopicPartition) -> bool:
        return len(pending[tp]) >= window.records or sizes[tp] >= window.value_bytes

    while True:
        positions = {tp: await consumer.position(tp) for tp in ends}
        fetching = [tp for tp in ends if positions[tp] < ends[tp] and not full(tp)]
        if fetching:
            fetched = await consumer.getmany(*fetching, timeout_ms=FETCH_WAIT_MS, max_records=FETCH_MAX)
            for tp, records in fetched.items():
                kept = [record for record in records if record.offset < ends[tp]]
                if len(kept) < len(records):
                    consumer.seek(tp, ends[tp])
                pending[tp].extend(kept)
                sizes[tp] += sum(len(record.value or b"") for record in kept)
            positions.update({tp: await consumer.position(tp) for tp in fetching})
        ready = {tp: pending[tp] for tp in ends if pending[tp] and (full(tp) or positions[tp] >= ends[tp])}
        if not ready and not fetching:
            return
        for tp in ready:
            pending[tp], sizes[tp] = [], 0
        yield ready  # empty while a window fills: the caller may report progress meanwhile


class Feed:
    def __init__(self, projector: Projector, consumer: AIOKafkaConsumer, topic: str, *, group: bool,
                 progress: Progress | None = None) -> None:
        """``group``: the consumer is a member of a consumer group (partitions assigned by Kafka, offsets
        committed); otherwise it was assigned its partitions by hand. ``progress``: told after each step of
        a bounded run (`to_head`, `through`)."""
        self.projector, self.consumer, self.topic, self.group = projector, consumer, topic, group
        self.progress = progress
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

    def _assigned(self) -> list[TopicPartition]:
        return [TopicPartition(self.topic, partition) for partition in sorted(self.partitions())]

    def seek_to_checkpoints(self) -> None:
        self.seek({partition: self.projector.resume_offset(partition) for partition in self.partitions()})

    async def to_head(self, window: Window = EACH_FETCH) -> None:
        """Apply the log up to the head it has, then up to the head it has by then, and so on until a pass has
        little left to do; then move the checkpoints over the markers that end what was read. New writes keep
        coming: a bounded run gets close to the head this way, and `through` applies exactly up to a bound."""
        self.seek_to_checkpoints()
        while True:
            heads = await self.consumer.end_offsets(self._assigned())
            if await self._up_to(heads, window) <= CLOSE_TO_HEAD:
                break
        await self._settle({tp.partition: await self.consumer.position(tp) for tp in self._assigned()})

    async def through(self, offsets: Mapping[int, int]) -> None:
        """Apply the log exactly up to ``offsets`` (inclusive, per partition): the last applied offsets of the
        live projection, so that a new generation ends where the live one does."""
        self.seek_to_checkpoints()
        while True:
            behind = [tp for tp in self._assigned()
                      if self.projector.resume_offset(tp.partition) <= offsets.get(tp.partition, -1)]
            passed = {tp.partition: offsets[tp.partition] + 1 for tp in behind
                      if await self.consumer.position(tp) > offsets[tp.partition]}
            if passed:  # read to the bound, which is a marker the live projection settled over
                await self._settle(passed)
                if all(self.projector.resume_offset(partition) < end for partition, end in passed.items()):
                    await asyncio.sleep(0.2)  # the stretch could not be read (logged): try again shortly
                continue
            if not behind:
                return
            await self._up_to({tp: offsets[tp.partition] + 1 for tp in behind}, EACH_FETCH)

    async def _up_to(self, ends: Mapping[TopicPartition, int], window: Window) -> int:
        """Apply every record before ``ends``; return how many there were."""
        applied = 0
        async for windows in read_before(self.consumer, ends, window):
            if windows:
                try:
                    await self.projector.handle_partitions({tp.partition: batch for tp, batch in windows.items()})
                except Reseek as reseek:
                    self.seek(reseek.offsets)
            count = sum(len(batch) for batch in windows.values())
            applied += count
            await self._report(count, sum(max(0, end - self.projector.resume_offset(tp.partition))
                                          for tp, end in ends.items()))
        return applied

    async def _settle(self, positions: dict[int, int]) -> None:
        """Move checkpoints over the transaction markers that end what was read, as the live loop does when a
        partition is idle: a generation whose partition ends with a marker must reach the live checkpoint that
        already covers it (`Projector.settle`, which reads the stretch to make sure)."""
        try:
            await self.projector.settle(positions, idle=0.0)
        except Reseek as reseek:
            self.seek(reseek.offsets)

    async def _report(self, applied: int, remaining: int) -> None:
        if self.progress is not None:
            await self.progress(applied, remaining)

    def lags(self) -> dict[int, int]:
        """Records in the log not yet applied, per partition this consumer reads."""
        result = {}
        for partition in sorted(self.partitions()):
            highwater = self.consumer.highwater(TopicPartition(self.topic, partition)) or 0
            result[partition] = max(0, highwater - self.projector.resume_offset(partition))
        return result
