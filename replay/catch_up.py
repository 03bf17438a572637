"""What `ams rebuild postgres` and `ams rebuild vectors` share: a new generation caught up with a topic.

A `Builder` feeds a `Projector` (the very code the live worker runs, over a sink that writes the new
generation) from the generation's own checkpoints, so an interrupted rebuild resumes where it stopped.
It reports progress to a rich task and to the `RebuildState` the admin endpoint serves.

"Caught up" is judged by the consumer's position, not by the last applied offset: the log is written
by transactional producers, so a partition usually ends with a commit marker, which has an offset but
is never delivered as a record.
"""

from __future__ import annotations

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
from projections.feed import Feed
from projections.projector import Projector
from projections.redis_layout import RedisLayout
from replay.rebuild_state import RebuildState, save_state

console = Console()
REPORT_SECONDS = 1.0


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


class Builder:
    """Applies ``topic`` to a new generation through ``projector``, from the generation's checkpoints: the
    projection driver (`projections.feed.Feed`) on every partition, telling ``tracker`` how far it got."""

    def __init__(self, projector: Projector, consumer: AIOKafkaConsumer, topic: str, partitions: int,
                 tracker: Tracker) -> None:
        self.projector, self.consumer, self.tracker = projector, consumer, tracker
        self.feed = Feed(projector, consumer, topic, group=False, progress=tracker.count)
        self.assigned = [TopicPartition(topic, partition) for partition in range(partitions)]

    async def start(self) -> None:
        if self.projector.reader is None:
            raise ValueError("a Builder's projector needs a PartitionReader: it reads the markers it settles over")
        await self.projector.load_checkpoints()
        self.consumer.assign(self.assigned)

    async def to_head(self) -> None:
        """Apply the log to about its head (`Feed.to_head`); the caller's last step applies exactly up to a
        bound, the live projection's checkpoints (`through`)."""
        await self.feed.to_head()
        await self.tracker.count(0, 0, force=True)

    async def through(self, offsets: Mapping[int, int]) -> None:
        await self.feed.through(offsets)
        await self.tracker.count(0, 0, force=True)
