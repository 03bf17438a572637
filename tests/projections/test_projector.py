"""The projector's rules, with an in-memory store, log and dead-letter topic (no stack: milliseconds).

The same rules hold against the real stores: `test_projector_order.py` and each sink's tests run them there.
"""

from __future__ import annotations

import pytest

from commands.envelope import PUT, Event, encode, now_ms
from projections.projector import SETTLE_AT_MOST, Projector, RawRecord, Reseek
from tests.projections.memory import ListReader, MemoryDeadLetters, MemorySink

TENANT = "t1"


def put(offset: int, key: str = "k", value: object = None, partition: int = 0) -> RawRecord:
    event = Event(PUT, TENANT, key, value if value is not None else {"n": offset}, ts=now_ms())
    return RawRecord(partition, offset, encode(event))


def projector(sink: MemorySink, reader: ListReader | None = None, max_value_bytes: int | None = None) -> Projector:
    return Projector(sink, MemoryDeadLetters(), "default", reader if reader is not None else ListReader(),
                     max_value_bytes=max_value_bytes)


def letters(projector: Projector) -> list[tuple[int, str]]:
    assert isinstance(projector.dead_letters, MemoryDeadLetters)
    return [(letter.offset, letter.reason) for letter in projector.dead_letters.letters]


async def test_what_the_checkpoint_covers_is_skipped() -> None:
    sink = MemorySink()
    sink.stored[0] = 2
    subject = projector(sink)
    await subject.load_checkpoints()
    await subject.handle([put(offset) for offset in range(6)])
    assert sink.applied == [(0, [3, 4, 5], 5)]
    await subject.handle([put(4), put(5)])  # delivered again: nothing new
    assert sink.applied == [(0, [3, 4, 5], 5)]


async def test_records_repeated_or_out_of_order_in_a_batch_are_applied_once_in_order() -> None:
    sink = MemorySink()
    subject = projector(sink)
    await subject.load_checkpoints()
    await subject.handle([put(0), put(1), put(1), put(0), put(2)])
    assert sink.applied == [(0, [0, 1, 2], 2)]


async def test_a_poison_record_is_dead_lettered_and_the_partition_moves_on() -> None:
    sink = MemorySink()
    subject = projector(sink)
    await subject.load_checkpoints()
    await subject.handle([put(0), RawRecord(0, 1, b"not an event"), put(2)])
    assert [offset for offset, _ in letters(subject)] == [1]
    assert sink.applied == [(0, [0, 2], 2)]
    assert subject.checkpoints[0] == 2


async def test_a_value_larger_than_the_gateway_takes_is_dead_lettered() -> None:
    sink = MemorySink()
    subject = projector(sink, max_value_bytes=100)
    await subject.load_checkpoints()
    await subject.handle([put(0, value="x" * 200), put(1)])
    assert [offset for offset, _ in letters(subject)] == [0]
    assert sink.applied == [(0, [1], 1)]


async def test_an_event_the_store_cannot_apply_is_isolated_and_dead_lettered_alone() -> None:
    sink = MemorySink()
    sink.fails = lambda event: event.key == "bad"
    subject = projector(sink)
    await subject.load_checkpoints()
    await subject.handle([put(0, "a"), put(1, "bad"), put(2, "b"), RawRecord(0, 3, b"poison")])
    assert [offset for offset, _ in letters(subject)] == [3, 1]
    assert "cannot apply" in letters(subject)[1][1]
    assert sink.read(TENANT, "a", now_ms()) is not None and sink.read(TENANT, "b", now_ms()) is not None
    assert sink.read(TENANT, "bad", now_ms()) is None
    assert subject.checkpoints[0] == sink.stored[0] == 3  # past the failing event and the poison record


async def test_a_store_that_is_down_is_retried_never_skipped() -> None:
    sink = MemorySink()
    subject = projector(sink)
    await subject.load_checkpoints()
    sink.unreachable = 2
    await subject.handle([put(0), put(1)])
    assert sink.applied == [(0, [0, 1], 1)]
    assert letters(subject) == []


async def test_a_checkpoint_moved_forward_by_another_writer_is_re_read_and_what_it_covers_skipped() -> None:
    sink = MemorySink()
    subject = projector(sink)
    await subject.load_checkpoints()
    await subject.handle([put(0)])
    sink.stored[0] = 3  # a rebuild went live with more applied
    await subject.handle([put(offset) for offset in range(1, 6)])
    assert sink.applied == [(0, [0], 0), (0, [4, 5], 5)]


async def test_a_checkpoint_moved_back_makes_the_feed_read_the_log_again_from_it() -> None:
    sink = MemorySink()
    subject = projector(sink)
    await subject.load_checkpoints()
    await subject.handle([put(0), put(1), put(2)])
    sink.stored[0] = 0  # the store lost what came after offset 0 and cannot tell (not a recoverable sink)
    with pytest.raises(Reseek) as reseek:
        await subject.handle([put(3)])
    assert reseek.value.offsets == {0: 1}
    assert subject.checkpoints[0] == 0


async def test_records_resumed_past_the_checkpoint_are_preceded_by_what_lies_between() -> None:
    sink = MemorySink()
    log = [put(offset) for offset in range(6)]
    subject = projector(sink, ListReader(log))
    await subject.take_partitions([0])
    await subject.handle(log[4:])  # a stream that resumed from an older committed position's far side
    assert [offsets for _, offsets, _ in sink.applied] == [[0, 1, 2, 3], [4, 5]]


async def test_an_idle_partition_is_settled_over_the_markers_that_end_it() -> None:
    sink = MemorySink()
    log = [put(0), put(1)]  # offset 2: a transaction's commit marker, never delivered
    subject = projector(sink, ListReader(log))
    await subject.take_partitions([0])
    await subject.handle(log)
    await subject.settle({0: 3}, idle=0.0)
    assert subject.checkpoints[0] == sink.stored[0] == 2
    assert sink.applied[-1] == (0, [], 2)


async def test_settling_applies_records_found_in_the_stretch_and_never_jumps_far() -> None:
    sink = MemorySink()
    log = [put(0), put(1), put(2)]
    subject = projector(sink, ListReader(log))
    await subject.take_partitions([0])
    await subject.handle(log[:1])
    await subject.settle({0: 4}, idle=0.0)  # records 1 and 2 were not handed over yet: applied, not skipped
    assert sink.applied[-1] == (0, [1, 2], 2)
    await subject.settle({0: 3 + SETTLE_AT_MOST + 1}, idle=0.0)  # too far to be markers only: left alone
    assert subject.checkpoints[0] == 2


async def test_a_partition_busy_recently_is_not_settled() -> None:
    sink = MemorySink()
    subject = projector(sink, ListReader([put(0)]))
    await subject.take_partitions([0])
    await subject.handle([put(0)])
    await subject.settle({0: 2}, idle=60.0)
    assert subject.checkpoints[0] == 0


async def test_the_after_apply_hook_is_called_once_per_successful_sink_apply() -> None:
    sink = MemorySink()
    calls: list[int] = []
    subject = Projector(sink, MemoryDeadLetters(), "default", ListReader(), after_apply=lambda: calls.append(1))
    await subject.load_checkpoints()
    sink.unreachable = 1  # a failed attempt is no apply
    await subject.handle([put(0), put(1)])
    await subject.handle([put(2)])
    assert len(calls) == 2
