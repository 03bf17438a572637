"""The log as the checker sees it: a tenant's events read back from Kafka and folded afresh.

The fold here is `commands.fold.apply`, the same function every projection calls, run over the events
read (``read_committed``) from the topic itself. Whatever a projection shows must equal this.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from ams.settings import Settings
from commands.envelope import STREAM_APPEND, Event, MalformedEvent, decode
from commands.fold import Record, Remembered, Status, apply, remember
from commands.keys import Position
from tests.support import read_topic

KV, STREAM = "kv", "stream"


@dataclass(frozen=True, slots=True)
class Logged:
    """One of the tenant's events, where it is in the log, and what the fold made of it."""

    partition: int
    offset: int
    event: Event
    status: Status
    version: int | None  # accepted: its offset; duplicate: the version the original produced
    reason: str

    @property
    def position(self) -> Position:
        return Position(self.partition, self.offset)

    @property
    def address(self) -> tuple[str, str]:
        return (STREAM if self.event.type == STREAM_APPEND else KV, self.event.key)


@dataclass
class Timeline:
    """A key's record after each of its accepted events, in log order."""

    offsets: list[int] = field(default_factory=list)
    records: list[Record | None] = field(default_factory=list)

    def add(self, offset: int, record: Record | None) -> None:
        self.offsets.append(offset)
        self.records.append(record)

    def at(self, offset: int) -> Record | None:
        """The record as of ``offset`` (the last accepted event at or before it)."""
        index = bisect.bisect_right(self.offsets, offset)
        return self.records[index - 1] if index else None

    def after(self, offset: int) -> Iterator[Record | None]:
        """The record as of ``offset``, then after each later accepted event."""
        index = bisect.bisect_right(self.offsets, offset)
        yield self.records[index - 1] if index else None
        yield from self.records[index:]

    def exact(self, version: int) -> tuple[bool, Record | None]:
        index = bisect.bisect_left(self.offsets, version)
        if index < len(self.offsets) and self.offsets[index] == version:
            return True, self.records[index]
        return False, None


@dataclass
class LogView:
    tenant: str
    events: list[Logged]
    last_offsets: dict[int, int]  # the last record of every partition read, whichever tenant it belongs to
    malformed: dict[Position, str]  # records that are not events, with the reason
    records: dict[tuple[str, str], Record | None] = field(default_factory=dict)
    # Each key's (and stream's) command index: the command ids its record let go (`commands.fold`).
    indexes: dict[tuple[str, str], dict[str, Remembered]] = field(default_factory=dict)
    timelines: dict[tuple[str, str], Timeline] = field(default_factory=dict)
    by_command: dict[str, list[Logged]] = field(default_factory=dict)
    at: dict[Position, Logged] = field(default_factory=dict)

    def fold(self) -> LogView:
        for logged in self.events:
            self.by_command.setdefault(logged.event.command_id or "", []).append(logged)
            self.at[logged.position] = logged
        return self


async def log_heads(settings: Settings) -> dict[int, int]:
    """The next offset of each partition of the event log."""
    consumer = AIOKafkaConsumer(**settings.kafka.client_options(), enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(settings.events_topic, n) for n in range(settings.partitions)]
        ends = await consumer.end_offsets(partitions)
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def read_log(settings: Settings, tenant: str, since: dict[int, int]) -> LogView:
    """The tenant's events since ``since``, each with the outcome a fresh fold gives it."""
    records = sorted(await read_topic(settings, settings.events_topic, since),
                     key=lambda record: (record.partition, record.offset))
    last: dict[int, int] = {}
    malformed: dict[Position, str] = {}
    state: dict[tuple[str, str], Record | None] = {}
    timelines: dict[tuple[str, str], Timeline] = {}
    events: list[Logged] = []
    indexes: dict[tuple[str, str], dict[str, Remembered]] = {}
    for record in records:
        last[record.partition] = max(last.get(record.partition, -1), record.offset)
        try:
            event = decode(record.value, record.headers, default_tenant=settings.default_tenant,
                           record_ts=record.timestamp, max_value_bytes=settings.max_value_bytes)
        except MalformedEvent as error:
            malformed[Position(record.partition, record.offset)] = str(error)
            continue
        if event.tenant != tenant:
            continue
        address = (STREAM if event.type == STREAM_APPEND else KV, event.key)
        index = indexes.setdefault(address, {})
        outcome = apply(state.get(address), event, record.offset, index.get(event.command_id or ""))
        remember(index, outcome)
        if outcome.accepted:
            state[address] = outcome.record
            timelines.setdefault(address, Timeline()).add(record.offset, outcome.record)
        events.append(Logged(record.partition, record.offset, event, outcome.status, outcome.version, outcome.reason))
    view = LogView(tenant, events, last, malformed, state, indexes, timelines)
    return view.fold()
