"""The projection loop's logic, independent of Faust: checkpoints, decoding, dead letters, retries.

Faust's own offset commits are only a hint. This class decides what is applied: events at or below the
sink's checkpoint are skipped, poison records go to the dead-letter topic (the partition keeps moving),
and a sink that is down is retried until it is back, never skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from commands.envelope import MalformedEvent, decode
from projections import metrics
from projections.dead_letters import DEAD_LETTER_TRANSIENT, DeadLetter, DeadLetters
from projections.sink import NO_CHECKPOINT, CheckpointMoved, Positioned, ProjectionSink

log = logging.getLogger("ams.projector")

@dataclass(frozen=True, slots=True)
class RawRecord:
    partition: int
    offset: int
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()
    timestamp_ms: int = 0


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
    checkpoints: dict[int, int] = field(default_factory=dict)
    # Parses a record of a topic other than memory.events; raises MalformedEvent for poison.
    decoder: Callable[[RawRecord], Any] | None = None

    async def load_checkpoints(self) -> dict[int, int]:
        self.checkpoints = await self._retrying("read checkpoints", self.sink.checkpoints)
        for partition, offset in self.checkpoints.items():
            metrics.CHECKPOINT.labels(self.sink.name, partition).set(offset)
        return self.checkpoints

    def resume_offset(self, partition: int) -> int:
        return self.checkpoints.get(partition, NO_CHECKPOINT) + 1

    async def handle(self, records: Sequence[RawRecord]) -> None:
        by_partition: dict[int, list[RawRecord]] = {}
        for record in records:
            by_partition.setdefault(record.partition, []).append(record)
        for partition, batch in by_partition.items():
            await self._handle_partition(partition, batch)

    async def _handle_partition(self, partition: int, batch: list[RawRecord]) -> None:
        expected = self.checkpoints.get(partition, NO_CHECKPOINT)
        fresh = [record for record in batch if record.offset > expected]
        if not fresh:
            return
        events: list[Positioned] = []
        poison: list[DeadLetter] = []
        for record in fresh:
            try:
                event = self._decode(record)
            except MalformedEvent as error:
                poison.append(DeadLetter(partition, record.offset, record.value, record.headers, str(error)))
                continue
            events.append(Positioned(event, record.offset))
        with metrics.BATCH_SECONDS.labels(self.sink.name).time():
            if poison:
                await self._retrying("dead-letter poison records", self.dead_letters.send, poison, self.sink.name)
                metrics.DEAD_LETTERED.labels(self.sink.name).inc(len(poison))
            await self._apply(partition, events, fresh[-1].offset, expected)
        metrics.APPLIED.labels(self.sink.name).inc(len(events))

    def _decode(self, record: RawRecord) -> Any:
        if self.decoder is not None:
            return self.decoder(record)
        return decode(record.value, record.headers, default_tenant=self.default_tenant, record_ts=record.timestamp_ms)

    async def _apply(self, partition: int, events: list[Positioned], through: int, expected: int) -> None:
        try:
            await self._retrying(f"apply partition {partition}", self.sink.apply, partition, events, through, expected)
        except CheckpointMoved as moved:
            log.warning("%s", moved)
            await self.load_checkpoints()
            raise Reseek({partition: self.resume_offset(partition)}) from None
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
        metrics.CHECKPOINT.labels(self.sink.name, partition).set(through)

    async def _dead_letter_failed(
        self, partition: int, events: list[Positioned], through: int, expected: int, error: Exception
    ) -> None:
        log.error("partition %d offset %d: the %s projection cannot apply it (%r); dead-lettering it",
                  partition, through, self.sink.name, error)
        letters = [DeadLetter(partition, item.offset, None, (), f"{type(error).__name__}: {error}") for item in events]
        await self._retrying("dead-letter a failing event", self.dead_letters.send, letters, self.sink.name)
        metrics.DEAD_LETTERED.labels(self.sink.name).inc(len(letters))
        await self._apply(partition, [], through, expected)

    async def _retrying(self, what: str, call, *args):  # type: ignore[no-untyped-def]
        delay = 0.1
        while True:
            try:
                return await call(*args)
            except (*self.sink.transient_errors, *DEAD_LETTER_TRANSIENT) as error:
                log.warning("%s projection: could not %s (%r); retrying in %.1fs", self.sink.name, what, error, delay)
                metrics.RETRIES.labels(self.sink.name).inc()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
