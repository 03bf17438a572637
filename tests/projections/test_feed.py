"""The projection driver's stop conditions (`projections.feed`), over a list-backed consumer and an in-memory
store: to the head, through a bound, in windows, and the bounded read under them (no stack: milliseconds).
The same runs against real Kafka: tests/replay/test_catch_up.py and the rebuild tests."""

from __future__ import annotations

from typing import Any, cast

from aiokafka import TopicPartition

from commands.envelope import PUT, Event, encode, now_ms
from projections.feed import Feed, Window, read_before
from projections.projector import Projector, RawRecord
from tests.projections.memory import ListConsumer, ListReader, MemoryDeadLetters, MemorySink

TOPIC = "events"
TP0, TP1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)


def log(*counts: int) -> list[RawRecord]:
    return [RawRecord(partition, offset, encode(Event(PUT, "t", f"k{offset}", offset, ts=now_ms())))
            for partition, count in enumerate(counts) for offset in range(count)]


def fed(records: list[RawRecord], markers: tuple[int, ...] = ()) -> tuple[Feed, MemorySink, ListConsumer]:
    sink, consumer = MemorySink(), ListConsumer(TOPIC, records, markers=markers)
    projector = Projector(sink, MemoryDeadLetters(), "default", ListReader(records))
    consumer.assign([TP0, TP1])
    return Feed(projector, cast(Any, consumer), TOPIC, group=False), sink, consumer


async def test_a_bounded_read_stops_at_each_end_and_leaves_what_lies_past_it_to_be_read_again() -> None:
    consumer = ListConsumer(TOPIC, log(7, 3), fetch=4)
    consumer.assign([TP0, TP1])
    read = [{tp.partition: [r.offset for r in batch] for tp, batch in windows.items()}
            async for windows in read_before(cast(Any, consumer), {TP0: 5, TP1: 3})]
    assert [offsets for windows in read for offsets in windows.get(0, [])] == [0, 1, 2, 3, 4]
    assert [offsets for windows in read for offsets in windows.get(1, [])] == [0, 1, 2]
    assert await consumer.position(TP0) == 5  # offset 5 was fetched, then handed back


async def test_windows_hand_a_partition_over_once_full_or_at_its_end() -> None:
    consumer = ListConsumer(TOPIC, log(7), fetch=2)
    consumer.assign([TP0])
    sizes = [len(windows[TP0]) async for windows in read_before(cast(Any, consumer), {TP0: 7}, Window(records=4))
             if windows]
    assert sizes == [4, 3]


async def test_to_the_head_applies_everything_and_settles_over_a_trailing_marker() -> None:
    feed, sink, _ = fed(log(5, 2), markers=(0,))
    await feed.projector.load_checkpoints()
    await feed.to_head(Window(records=3))
    assert sink.stored == {0: 5, 1: 1}  # partition 0's checkpoint is past its marker at offset 5
    assert [offset for partition, offsets, _ in sink.applied if partition == 0 for offset in offsets] == [0, 1, 2, 3, 4]


async def test_through_a_bound_applies_exactly_up_to_it_and_resumes_from_the_checkpoint() -> None:
    feed, sink, consumer = fed(log(6, 4))
    await feed.projector.load_checkpoints()
    await feed.through({0: 2, 1: 0})
    assert sink.stored == {0: 2, 1: 0}
    assert await consumer.position(TP0) == 3
    await feed.through({0: 5, 1: 3})
    assert sink.stored == {0: 5, 1: 3}
    applied = [offset for partition, offsets, _ in sink.applied if partition == 0 for offset in offsets]
    assert applied == list(range(6))  # each once


async def test_progress_is_told_what_each_step_applied_and_what_is_left() -> None:
    told: list[tuple[int, int]] = []

    async def progress(applied: int, remaining: int) -> None:
        told.append((applied, remaining))

    feed, _, _ = fed(log(4))
    feed.progress = progress
    await feed.projector.load_checkpoints()
    await feed.through({0: 3})
    assert sum(applied for applied, _ in told) == 4 and told[-1][1] == 0
