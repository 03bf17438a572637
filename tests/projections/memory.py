"""In-memory stand-ins for a projection's store, its log and its dead-letter topic: the projector's rules and
the sink contract run with them in milliseconds, beside the real-store tests that run against the stack.

`MemorySink` folds with `commands.fold.apply` as every real sink does and keeps its checkpoints next to its
records, so it honours the sink contract (`tests/projections/sink_contract.py`). It can be told to fail.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, ClassVar

from aiokafka import TopicPartition

from ams.settings import KafkaAccess
from commands.envelope import STREAM_APPEND, Event
from commands.fold import Outcome, Record, Remembered, apply, remember, visible
from projections.dead_letters import DeadLetter, DeadLetters
from projections.projector import LogRecord
from projections.sink import NO_CHECKPOINT, CheckpointMoved, Positioned, ProjectionSink

# A record's place: tenant, key, and whether it is the key's stream (a stream is not the key of the same name).
Place = tuple[str, str, bool]


class MemorySink(ProjectionSink):
    name: ClassVar[str] = "memory"

    def __init__(self) -> None:
        self.records: dict[Place, Record] = {}
        self.index: dict[Place, dict[str, Remembered]] = {}
        self.stored: dict[int, int] = {}  # the store's checkpoints
        self.applied: list[tuple[int, list[int], int]] = []  # (partition, offsets, through) of each apply
        self.fails: Callable[[Event], bool] = lambda event: False  # events this store cannot apply (a bug)
        self.unreachable = 0  # the next this many calls fail as if the store were down

    async def checkpoints(self) -> dict[int, int]:
        self._reach()
        return dict(self.stored)

    async def apply(self, partition: int, events: Sequence[Positioned], through: int,
                    expected: int) -> list[Outcome | None]:
        self._reach()
        found = self.stored.get(partition, NO_CHECKPOINT)
        if found != expected:
            raise CheckpointMoved(partition, expected, found)
        if any(self.fails(item.event) for item in events):
            raise ValueError("this store cannot apply that event")
        records, index = dict(self.records), {place: dict(known) for place, known in self.index.items()}
        outcomes: list[Outcome | None] = []
        for item in events:
            place = (item.event.tenant, item.event.key, item.event.type == STREAM_APPEND)
            known = index.setdefault(place, {})
            command = item.event.command_id
            outcome = apply(records.get(place), item.event, item.offset, known.get(command) if command else None)
            if outcome.accepted and outcome.record is not None:
                records[place] = outcome.record
                remember(known, outcome)
            outcomes.append(outcome)
        self.records, self.index, self.stored[partition] = records, index, through
        self.applied.append((partition, [item.offset for item in events], through))
        return outcomes

    def read(self, tenant: str, key: str, now: int) -> dict[str, Any] | None:
        record = visible(self.records.get((tenant, key, False)), now)
        return None if record is None else {"value": record.value, "version": record.version}

    def _reach(self) -> None:
        if self.unreachable:
            self.unreachable -= 1
            raise ConnectionError("the store is down")


class ListReader:
    """A log reader (`projections.projector.LogReader`) over records kept in a list."""

    def __init__(self, records: Sequence[LogRecord] = ()) -> None:
        self.records = list(records)

    async def read(self, partition: int, start: int, end: int | None = None) -> AsyncIterator[list[LogRecord]]:
        found = [record for record in self.records if record.partition == partition and record.offset >= start
                 and (end is None or record.offset < end)]
        if found:
            yield found


class MemoryDeadLetters(DeadLetters):
    """The dead-letter topic as a list."""

    def __init__(self) -> None:
        super().__init__(KafkaAccess(""), "dead-letters", "events")
        self.letters: list[DeadLetter] = []

    async def send(self, letters: Sequence[DeadLetter], projection: str) -> None:
        self.letters.extend(letters)

    async def close(self) -> None:
        pass


class ListConsumer:
    """What `projections.feed.Feed` asks of an aiokafka consumer, over records kept in a list per partition:
    positions, seeks, fetches of at most ``fetch`` records a partition, and the head of each partition (which
    a trailing transaction marker, ``markers``, puts one past the last record)."""

    def __init__(self, topic: str, records: Sequence[LogRecord], fetch: int = 2, markers: Sequence[int] = ()) -> None:
        self.topic, self.fetch = topic, fetch
        self.records: dict[int, list[LogRecord]] = {}
        for record in records:
            self.records.setdefault(record.partition, []).append(record)
        self.markers = set(markers)  # partitions whose last offset is a commit marker
        self.positions: dict[TopicPartition, int] = {}

    def assign(self, partitions: Sequence[TopicPartition]) -> None:
        self.positions = dict.fromkeys(partitions, 0)

    def assignment(self) -> set[TopicPartition]:
        return set(self.positions)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    def head(self, partition: int) -> int:
        found = self.records.get(partition, [])
        return (found[-1].offset + 1 if found else 0) + (partition in self.markers)

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    async def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.head(tp.partition) for tp in partitions}

    async def getmany(self, *partitions: TopicPartition, timeout_ms: int = 0,
                      max_records: int | None = None) -> dict[TopicPartition, list[LogRecord]]:
        fetched = {}
        for tp in partitions:
            left = [record for record in self.records.get(tp.partition, []) if record.offset >= self.positions[tp]]
            if left:
                fetched[tp] = left[:self.fetch]
                self.positions[tp] = left[:self.fetch][-1].offset + 1
            if len(left) <= self.fetch:  # nothing but markers left: the position moves over them
                self.positions[tp] = max(self.positions[tp], self.head(tp.partition))
        return fetched
