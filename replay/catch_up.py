"""What `ams rebuild postgres` and `ams rebuild vectors` share: a new generation caught up with a topic.

A `Builder` feeds a `Projector` (the very code the live worker runs, over a sink that writes the new
generation) from the generation's own checkpoints, so an interrupted rebuild resumes where it stopped.
It reports progress to a rich task and to the `RebuildState` the admin endpoint serves.

"Caught up" is judged by the consumer's position, not by the last applied offset: the log is written
by transactional producers, so a partition usually ends with a commit marker, which has an offset but
is never delivered as a record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)

from ams.settings import Settings
from projections.projector import LogRecord, Projector, Reseek
from projections.redis_layout import RedisLayout
from replay.rebuild import RebuildState, save_state

console = Console()
REPORT_SECONDS = 1.0
MAX_RECORDS = 20_000
CLOSE_TO_HEAD = 1_000  # a pass to the head that applied at most this many events ends `Builder.to_head`


def progress_display(*, quiet: bool) -> Progress:
    """One display for one or several rebuilds: a row each, with events/s and an estimate."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                    TextColumn("{task.fields[rate]} ev/s"), TimeRemainingColumn(), console=console, disable=quiet)


@dataclass
class Tracker:
    """Counts what a rebuild applied, estimates the rest, and publishes both (bar and Redis state)."""

    state: RebuildState
    redis: aioredis.Redis
    layout: RedisLayout
    progress: Progress
    task: TaskID | None = None
    _started: float = field(default_factory=time.monotonic)
    _reported: float = 0.0

    def __post_init__(self) -> None:
        if self.task is None:
            self.task = self.progress.add_task(f"rebuilding {self.state.projection}", total=None, rate="-")

    def describe(self, what: str) -> None:
        assert self.task is not None
        self.progress.update(self.task, description=f"{self.state.projection}: {what}")

    async def count(self, applied: int, remaining: int, *, force: bool = False) -> None:
        state = self.state
        state.applied += applied
        state.total = state.applied + remaining
        state.events_per_second = state.applied / max(time.monotonic() - self._started, 1e-6)
        state.eta_seconds = remaining / state.events_per_second if state.events_per_second else None
        assert self.task is not None
        self.progress.update(self.task, completed=state.applied, total=state.total,
                             rate=f"{state.events_per_second:,.0f}")
        if force or time.monotonic() - self._reported > REPORT_SECONDS:
            self._reported = time.monotonic()
            await save_state(self.redis, self.layout, state)

    async def save(self) -> None:
        await save_state(self.redis, self.layout, self.state)


async def started_consumer(settings: Settings) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(**settings.kafka.client_options(), enable_auto_commit=False,
                                isolation_level="read_committed", max_partition_fetch_bytes=8 << 20)
    await consumer.start()
    return consumer


@dataclass
class Builder:
    """Applies ``topic`` to a new generation through ``projector``, from the generation's checkpoints."""

    projector: Projector
    consumer: AIOKafkaConsumer
    topic: str
    partitions: int
    tracker: Tracker

    @property
    def assigned(self) -> list[TopicPartition]:
        return [TopicPartition(self.topic, partition) for partition in range(self.partitions)]

    async def start(self) -> None:
        if self.projector.reader is None:
            raise ValueError("a Builder's projector needs a PartitionReader: it reads the markers it settles over")
        await self.projector.load_checkpoints()
        self.consumer.assign(self.assigned)

    def _seek_to_checkpoints(self) -> None:
        for tp in self.assigned:
            self.consumer.seek(tp, self.projector.resume_offset(tp.partition))

    async def to_head(self) -> None:
        """Apply the log up to the head it has, then up to the head it has by then, and so on until a pass
        has little left to do. New writes keep coming: a rebuild gets close to the head this way, and its
        caller's last step applies exactly up to a bound (the live projection's checkpoints)."""
        self._seek_to_checkpoints()
        while True:
            heads = await self.consumer.end_offsets(self.assigned)
            if await self._up_to(heads) <= CLOSE_TO_HEAD:
                break
        positions = {tp.partition: await self.consumer.position(tp) for tp in self.assigned}
        await self._settle(positions)
        await self.tracker.count(0, 0, force=True)

    async def _up_to(self, ends: Mapping[TopicPartition, int]) -> int:
        """Apply every record before ``ends``; return how many there were."""
        applied = 0
        while behind := [tp for tp in self.assigned if await self.consumer.position(tp) < ends[tp]]:
            applied += await self._step(behind, {tp.partition: ends[tp] - 1 for tp in behind}, ends)
        return applied

    async def through(self, offsets: Mapping[int, int]) -> None:
        """Apply the log exactly up to ``offsets`` (inclusive, per partition): the last applied offsets of
        the live projection, so that the new generation ends where the live one does."""
        self._seek_to_checkpoints()
        while True:
            behind = [tp for tp in self.assigned
                      if self.projector.resume_offset(tp.partition) <= offsets.get(tp.partition, -1)]
            passed = {tp.partition: offsets[tp.partition] + 1 for tp in behind
                      if await self.consumer.position(tp) > offsets[tp.partition]}
            if passed:  # read to the bound, which is a marker the live projection settled over
                await self._settle(passed)
                if all(self.projector.resume_offset(partition) < end for partition, end in passed.items()):
                    await asyncio.sleep(0.2)  # the stretch could not be read (logged): try again shortly
                continue
            if not behind:
                await self.tracker.count(0, 0, force=True)
                return
            heads = {tp: offsets[tp.partition] + 1 for tp in behind}
            await self._step(behind, {tp.partition: offsets[tp.partition] for tp in behind}, heads)

    async def _settle(self, positions: dict[int, int]) -> None:
        """Move checkpoints over the transaction markers that end what was read, as the live worker does
        when a partition is idle: a generation whose partition ends with a marker must reach the live
        checkpoint that already covers it (`Projector.settle`, which reads the stretch to make sure)."""
        try:
            await self.projector.settle(positions, idle=0.0)
        except Reseek as reseek:
            for partition, offset in reseek.offsets.items():
                self.consumer.seek(TopicPartition(self.topic, partition), offset)

    async def _step(self, behind: list[TopicPartition], last: Mapping[int, int],
                    heads: Mapping[TopicPartition, int]) -> int:
        """One fetch of the partitions ``behind``, applied up to ``last`` (per partition); returns how many."""
        batch = await self.consumer.getmany(*behind, timeout_ms=200, max_records=MAX_RECORDS)
        records: dict[int, list[LogRecord]] = {}
        for tp, tp_records in batch.items():
            records[tp.partition] = [record for record in tp_records if record.offset <= last[tp.partition]]
            if tp_records and tp_records[-1].offset > last[tp.partition]:
                # Records that arrived after ``last`` was read: left for the next step, so the consumer must
                # read them again (a position past them would leave a gap the projector cannot see).
                self.consumer.seek(tp, last[tp.partition] + 1)
        try:
            await self.projector.handle_partitions(records)
        except Reseek as reseek:
            for partition, offset in reseek.offsets.items():
                self.consumer.seek(TopicPartition(self.topic, partition), offset)
        applied = sum(len(tp_records) for tp_records in records.values())
        remaining = sum(max(0, heads[tp] - self.projector.resume_offset(tp.partition)) for tp in behind)
        await self.tracker.count(applied, remaining)
        return applied
