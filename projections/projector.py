"""The projection loop's logic, independent of the Kafka client: checkpoints, decoding, dead letters, retries.

Offsets committed to Kafka are only a hint. This class decides what is applied: events at or below the
sink's checkpoint are skipped, poison records go to the dead-letter topic (the partition keeps moving),
and a sink that is down is retried until it is back, never skipped.

A store that loses data by itself (a `RecoverableSink`, such as Redis) is recovered here, under the
same lock as the batches: restored, then caught up with a private reader of the log rather than by
seeking the worker's consumer backwards (which would deliver its already-buffered records first).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from commands.envelope import MalformedEvent, decode
from commands.log import record_key
from projections import metrics
from projections.dead_letters import DEAD_LETTER_TRANSIENT, DeadLetter, DeadLetters
from projections.sink import NO_CHECKPOINT, CheckpointMoved, Positioned, ProjectionSink, RecoverableSink

log = logging.getLogger("ams.projector")
PROGRESS_SECONDS = 5.0  # how often a long catch-up says how far it got
# settle() moves a checkpoint over at most this many offsets without records: the commit marker of a
# transaction, or an aborted batch (at most AMS_MAX_BATCH_OPERATIONS records) and its marker.
SETTLE_AT_MOST = 1024

class LogRecord(Protocol):
    """One record of the log as the projector reads it: an aiokafka `ConsumerRecord` is one as it is."""

    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...
    @property
    def timestamp(self) -> int: ...  # milliseconds
    @property
    def key(self) -> bytes | None: ...


class LogReader(Protocol):
    """Reads a stretch of one partition outside the worker's consumer (`projections.log_reader.PartitionReader`)."""

    def read(self, partition: int, start: int, end: int | None = None) -> AsyncIterator[Sequence[LogRecord]]:
        """Committed records of ``partition`` from ``start`` up to ``end`` (exclusive; None: the end it had
        when called), in batches."""
        ...


class RawRecord(NamedTuple):
    """A `LogRecord` made by hand (tests, or what another client delivers)."""

    partition: int
    offset: int
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()
    timestamp: int = 0
    key: bytes | None = None


def _ascending(batch: Sequence[LogRecord], after: int) -> list[LogRecord]:
    """The records above ``after`` with each offset once, in order: a stream re-sought on an assignment may
    deliver some offsets twice (fetched from the group's committed offset, then again from the seek)."""
    fresh = []
    for record in batch:
        if record.offset > after:
            fresh.append(record)
            after = record.offset
    return fresh


class Reseek(Exception):
    """The worker must seek these partitions to these offsets: the sink's checkpoint moved under it."""

    def __init__(self, offsets: dict[int, int]) -> None:
        super().__init__(f"seek to {offsets}")
        self.offsets = offsets


@dataclass
class Projector:
    sink: ProjectionSink
    dead_letters: DeadLetters
    default_tenant: str
    reader: LogReader | None = None  # how a recovering sink catches up with the log
    # How logs name this projection: the sink's name, plus the sandbox it projects, if any.
    label: str = ""
    # How metrics name it: the label, unless that names a tenant the operator keeps out of metrics.
    metrics_label: str = ""
    checkpoints: dict[int, int] = field(default_factory=dict)
    # Parses a record of a topic other than memory.events; raises MalformedEvent for poison.
    decoder: Callable[[LogRecord], Any] | None = None
    max_value_bytes: int | None = None  # larger values are dead-lettered, as the gateway refuses them
    # Partitions whose next records have not been checked for a gap since they were assigned.
    unverified: set[int] = field(default_factory=set)
    last_handled: dict[int, float] = field(default_factory=dict)  # per partition, time.monotonic()
    # Called right after each successful sink apply, before anything else: the fault suite's hook
    # (`projections.faults`), given by the worker that builds the projector; None costs one test per batch.
    after_apply: Callable[[], None] | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.label = self.label or self.sink.name
        self.metrics_label = self.metrics_label or self.label

    async def load_checkpoints(self, assigned: Iterable[int] = ()) -> dict[int, int]:
        """Read the store's checkpoints; ``assigned``: the partitions this worker was just given.

        The first records of an assigned partition may come from where the group last committed, not from the
        checkpoint the worker seeks to: they are checked for a gap before anything is applied.
        """
        now = time.monotonic()
        for partition in assigned:
            self.unverified.add(partition)
            self.last_handled[partition] = now  # idle (for settle) counts from the assignment
        self.checkpoints = await self._retrying("read checkpoints", self.sink.checkpoints)
        for partition, offset in self.checkpoints.items():
            metrics.CHECKPOINT.labels(self.metrics_label, partition).set(offset)
        return self.checkpoints

    async def take_partitions(self, partitions: Collection[int]) -> dict[int, int]:
        """Begin projecting newly assigned ``partitions``: read the store's checkpoints (not in the middle of a
        batch), restore what the store lost; return the offset to read each partition from."""
        async with self._lock:
            await self.load_checkpoints(partitions)
        await self.recover_incomplete(partitions)
        return {partition: self.resume_offset(partition) for partition in partitions}

    def resume_offset(self, partition: int) -> int:
        return self.checkpoints.get(partition, NO_CHECKPOINT) + 1

    async def handle(self, records: Sequence[LogRecord]) -> None:
        by_partition: dict[int, list[LogRecord]] = {}
        for record in records:
            by_partition.setdefault(record.partition, []).append(record)
        await self.handle_partitions(by_partition)

    async def handle_partitions(self, by_partition: Mapping[int, Sequence[LogRecord]]) -> None:
        """`handle` for records already sorted out by partition (as a Kafka consumer's fetch gives them)."""
        by_partition = {partition: batch for partition, batch in by_partition.items() if batch}
        async with self._lock:
            # Partitions are independent (a checkpoint and keys of their own): apply them concurrently.
            results = await asyncio.gather(*(self._handle_partition(partition, batch)
                                             for partition, batch in by_partition.items()), return_exceptions=True)
            now = time.monotonic()
            self.last_handled.update(dict.fromkeys(by_partition, now))
        reseek: dict[int, int] = {}
        for result in results:
            if isinstance(result, Reseek):
                reseek.update(result.offsets)
            elif isinstance(result, BaseException):
                raise result
        if reseek:
            raise Reseek(reseek)

    async def settle(self, positions: dict[int, int], idle: float) -> None:
        """Move the checkpoint of partitions idle for ``idle`` seconds over what ends them without being an
        event (transaction markers, aborted records), so that a projection that applied everything reports no
        lag. ``positions``: the next offset the consumer fetches, per partition. The stretch is read from the
        log first: records found there are applied as usual, and the checkpoint moves only over a stretch
        of at most SETTLE_AT_MOST offsets that held no record."""
        if self.reader is None:
            return
        async with self._lock:
            now = time.monotonic()
            for partition, position in positions.items():
                checkpoint = self.checkpoints.get(partition, NO_CHECKPOINT)
                if not 0 < position - 1 - checkpoint <= SETTLE_AT_MOST or \
                        now - self.last_handled.get(partition, now) < idle:
                    continue
                try:
                    found = [record async for batch in self.reader.read(partition, checkpoint + 1, position)
                             for record in batch]
                except DEAD_LETTER_TRANSIENT as error:
                    log.warning("%s projection: could not read the end of partition %d (%r); trying later",
                                self.label, partition, error)
                    continue
                if found:  # records after all (the stream is slow to hand them over): applied as usual
                    await self._handle_partition(partition, found)
                    continue
                try:
                    await self._apply(partition, [], position - 1, checkpoint)
                except CheckpointMoved as moved:  # the next batch or check follows it
                    log.warning("%s projection: %s", self.label, moved)

    async def write_held(self) -> None:
        """Let the sink write what it holds in memory (`ProjectionSink.write_held`), between batches."""
        async with self._lock:
            await self.sink.write_held()

    async def recover_incomplete(self, partitions: Collection[int], *, unless_busy: bool = False) -> list[int]:
        """Recover the partitions whose store lost data; return them. ``unless_busy``: skip the check
        while a batch or a recovery runs (a periodic check will come back)."""
        if not isinstance(self.sink, RecoverableSink) or not partitions or (unless_busy and self._lock.locked()):
            return []
        async with self._lock:
            lost = await self._retrying("check for lost data", self.sink.incomplete, partitions, self.checkpoints)
            for partition in lost:
                await self._recover(partition)
            return lost

    async def _recover(self, partition: int) -> int:
        assert isinstance(self.sink, RecoverableSink) and self.reader is not None
        log.warning("%s projection: partition %d is incomplete (its store lost data); recovering it",
                    self.label, partition)
        checkpoint = await self._retrying(f"restore partition {partition}", self.sink.restore, partition)
        self.checkpoints[partition] = checkpoint
        metrics.CHECKPOINT.labels(self.metrics_label, partition).set(checkpoint)
        await self._retrying(f"replay partition {partition}", self._replay_to_end, partition)
        await self._retrying(f"mark partition {partition} complete", self.sink.mark_complete, partition)
        metrics.RECOVERIES.labels(self.metrics_label).inc()
        log.warning("%s projection: partition %d recovered at offset %d", self.label, partition,
                    self.checkpoints.get(partition, NO_CHECKPOINT))
        return self.checkpoints.get(partition, NO_CHECKPOINT)

    async def _replay_to_end(self, partition: int, end: int | None = None) -> None:
        """Apply the partition's records from its checkpoint up to ``end`` (None: the log's end), read from the log."""
        assert self.reader is not None
        reported = time.monotonic()
        async for records in self.reader.read(partition, self.resume_offset(partition), end):
            await self._handle_partition(partition, records)
            if time.monotonic() - reported > PROGRESS_SECONDS:
                reported = time.monotonic()
                log.warning("%s projection: partition %d is being caught up with the log, at offset %d",
                            self.label, partition, self.checkpoints.get(partition, NO_CHECKPOINT))

    async def _handle_partition(self, partition: int, batch: Sequence[LogRecord]) -> None:
        for _ in range(3):
            try:
                await self._handle_fresh(partition, batch)
                return
            except CheckpointMoved as moved:
                log.warning("%s", moved)
                if moved.found < moved.expected and isinstance(self.sink, RecoverableSink) and self.reader:
                    await self._recover(partition)  # the store went back in time: it lost data
                    continue  # then apply what the batch has beyond the recovered checkpoint
                await self.load_checkpoints()
                if self.checkpoints.get(partition, NO_CHECKPOINT) < moved.expected:
                    break  # lost, and not recoverable here: read the log again from the checkpoint
                # Otherwise another writer moved it forward (a rebuild went live): skip what it covers.
        raise Reseek({partition: self.resume_offset(partition)})

    async def _handle_fresh(self, partition: int, batch: Sequence[LogRecord]) -> None:
        expected = self.checkpoints.get(partition, NO_CHECKPOINT)
        fresh = _ascending(batch, expected)
        if fresh and partition in self.unverified and self.reader is not None:
            self.unverified.discard(partition)
            if fresh[0].offset > expected + 1:  # what lies between must be read, not assumed absent
                log.warning("%s projection: partition %d's records resumed at offset %d, past its checkpoint %d; "
                            "reading what lies between from the log first", self.label, partition, fresh[0].offset,
                            expected)
                await self._retrying(f"read partition {partition} up to offset {fresh[0].offset}",
                                     self._replay_to_end, partition, fresh[0].offset)
                expected = self.checkpoints.get(partition, NO_CHECKPOINT)
                fresh = _ascending(batch, expected)
        if not fresh:
            return
        events: list[Positioned] = []
        poison: list[DeadLetter] = []
        decode_record, envelopes = self._decode, self.decoder is None
        for record in fresh:
            try:
                event = decode_record(record)
            except MalformedEvent as error:
                poison.append(DeadLetter(partition, record.offset, record.value, record.headers, str(error)))
                continue
            # An envelope event whose Kafka key is its own tenant and key sits where that key routes.
            events.append(Positioned(event, record.offset, envelopes and record.key == record_key(event)))
        with metrics.BATCH_SECONDS.labels(self.metrics_label).time():
            if poison:
                await self._retrying("dead-letter poison records", self.dead_letters.send, poison, self.label)
                metrics.DEAD_LETTERED.labels(self.metrics_label).inc(len(poison))
            await self._apply(partition, events, fresh[-1].offset, expected)

    def _decode(self, record: LogRecord) -> Any:
        if self.decoder is not None:
            return self.decoder(record)
        return decode(record.value, record.headers, default_tenant=self.default_tenant, record_ts=record.timestamp,
                      max_value_bytes=self.max_value_bytes)

    async def _apply(self, partition: int, events: list[Positioned], through: int, expected: int) -> None:
        try:
            await self._retrying(f"apply partition {partition}", self.sink.apply, partition, events, through, expected)
            if self.after_apply is not None:
                self.after_apply()
        except CheckpointMoved:
            raise  # decided by _handle_partition: recover, skip forward, or read the log again
        except Exception as error:  # noqa: BLE001 - a bug or a poison event in the sink: isolate it
            if len(events) <= 1:
                await self._dead_letter_failed(partition, events, through, expected, error)
                return
            log.warning("partition %d: batch failed (%r); applying its events one by one", partition, error)
            for item in events:
                await self._apply(partition, [item], item.offset, self.checkpoints.get(partition, expected))
            if self.checkpoints.get(partition, expected) < through:
                await self._apply(partition, [], through, self.checkpoints.get(partition, expected))
            return
        self.checkpoints[partition] = through
        metrics.CHECKPOINT.labels(self.metrics_label, partition).set(through)
        metrics.APPLIED.labels(self.metrics_label).inc(len(events))

    async def _dead_letter_failed(
        self, partition: int, events: list[Positioned], through: int, expected: int, error: Exception
    ) -> None:
        log.error("partition %d offset %d: the %s projection cannot apply it (%r); dead-lettering it",
                  partition, through, self.label, error)
        letters = [DeadLetter(partition, item.offset, None, (), f"{type(error).__name__}: {error}") for item in events]
        await self._retrying("dead-letter a failing event", self.dead_letters.send, letters, self.label)
        metrics.DEAD_LETTERED.labels(self.metrics_label).inc(len(letters))
        await self._apply(partition, [], through, expected)

    async def _retrying(self, what: str, call, *args):  # type: ignore[no-untyped-def]
        delay = 0.1
        while True:
            try:
                return await call(*args)
            except (*self.sink.transient_errors, *DEAD_LETTER_TRANSIENT) as error:
                log.warning("%s projection: could not %s (%r); retrying in %.1fs", self.label, what, error, delay)
                metrics.RETRIES.labels(self.metrics_label).inc()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

