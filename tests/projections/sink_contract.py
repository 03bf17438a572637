"""The contract every projection sink honours. Each adapter's test module subclasses `SinkContract` (sinks of
``memory.events``, which fold) or `CheckpointContract` (any sink: the vector views too).

Modelled on eventsourcing's recorder test cases: one set of expectations, many stores.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import pytest

from commands.envelope import DELETE, PUT, STREAM_APPEND, Event, now_ms
from commands.fold import MAX_REMEMBERED_COMMANDS, Status, fold
from projections.sink import CheckpointMoved, Positioned, ProjectionSink


class CheckpointContract(ABC):
    """What makes replays harmless, for any sink: a batch and its checkpoint go together, a stale expected
    checkpoint changes nothing, and how a log is cut into batches does not change the state it leads to."""

    partition = 0

    @abstractmethod
    async def make_sink(self) -> ProjectionSink:
        """A sink over a fresh, empty namespace of the real store."""

    @abstractmethod
    def batch(self, tenant: str) -> list[Positioned]:
        """Six items of ``tenant`` at offsets 0 to 5, of the kind the sink reads."""

    @abstractmethod
    async def state(self, sink: ProjectionSink, tenant: str) -> Any:
        """What a reader of this store sees of ``tenant`` (compared between runs)."""

    @pytest.fixture
    async def sink(self) -> Any:
        sink = await self.make_sink()
        await sink.start()
        yield sink
        await sink.close()

    async def _state_of(self, items: list[Positioned], tenant: str, cuts: tuple[int, ...]) -> Any:
        """The state a fresh sink reaches with ``items`` applied in batches cut at ``cuts``."""
        sink = await self.make_sink()
        await sink.start()
        try:
            checkpoint = -1
            for start, end in zip((0, *cuts), (*cuts, len(items)), strict=True):
                await sink.apply(self.partition, items[start:end], through=end - 1, expected=checkpoint)
                checkpoint = end - 1
            assert (await sink.checkpoints())[self.partition] == len(items) - 1
            return await self.state(sink, tenant)
        finally:
            await sink.close()

    async def test_a_stale_expected_checkpoint_changes_nothing(self, sink: ProjectionSink, tenant: str) -> None:
        items = self.batch(tenant)
        await sink.apply(self.partition, items[:2], through=1, expected=-1)
        before = await self.state(sink, tenant)
        with pytest.raises(CheckpointMoved) as raised:
            await sink.apply(self.partition, items[2:], through=5, expected=-1)
        assert raised.value.found == 1
        assert (await sink.checkpoints())[self.partition] == 1
        assert await self.state(sink, tenant) == before

    async def test_the_checkpoint_moves_past_records_that_carried_no_event(self, sink: ProjectionSink) -> None:
        await sink.apply(self.partition, [], through=41, expected=-1)
        assert (await sink.checkpoints())[self.partition] == 41

    async def test_a_log_cut_into_batches_anywhere_gives_the_same_state(self, tenant: str) -> None:
        items = self.batch(tenant)
        whole = await self._state_of(items, tenant, ())
        assert whole == await self._state_of(items, tenant, (2, 4))
        assert whole == await self._state_of(items, tenant, (1, 2, 3, 4, 5))


class SinkContract(CheckpointContract):
    """A sink of ``memory.events``: it folds, as `commands.fold` says."""

    @abstractmethod
    async def read(self, sink: ProjectionSink, tenant: str, key: str) -> dict[str, Any] | None:
        """The key as a reader of this store sees it: {"value": ..., "version": ...}, or None."""

    def batch(self, tenant: str) -> list[Positioned]:
        return self.events(tenant)

    async def state(self, sink: ProjectionSink, tenant: str) -> Any:
        return {key: await self.read(sink, tenant, key) for key in ("a", "b")}

    @staticmethod
    def events(tenant: str) -> list[Positioned]:
        ts = now_ms()
        return [
            Positioned(Event(PUT, tenant, "a", {"n": 1}, ts=ts, command_id="c1"), 0),
            Positioned(Event(PUT, tenant, "b", [1, 2], ts=ts), 1),
            Positioned(Event(PUT, tenant, "a", {"n": 2}, ts=ts, if_version=0), 2),
            Positioned(Event(PUT, tenant, "a", {"n": 3}, ts=ts, if_version=0), 3),  # loses: a is at 2
            Positioned(Event(DELETE, tenant, "b", ts=ts), 4),
            Positioned(Event(PUT, tenant, "a", {"n": 1}, ts=ts, command_id="c1"), 5),  # a retry: duplicate
        ]

    async def test_a_batch_and_its_checkpoint_are_applied_together(self, sink: ProjectionSink, tenant: str) -> None:
        outcomes = await sink.apply(self.partition, self.events(tenant), through=5, expected=-1)
        statuses = [outcome.status if outcome else None for outcome in outcomes]
        assert statuses == [Status.ACCEPTED, Status.ACCEPTED, Status.ACCEPTED, Status.REJECTED,
                            Status.ACCEPTED, Status.DUPLICATE]
        assert (await sink.checkpoints())[self.partition] == 5
        assert await self.read(sink, tenant, "a") == {"value": {"n": 2}, "version": 2}
        assert await self.read(sink, tenant, "b") is None

    async def test_outcomes_are_the_folds(self, sink: ProjectionSink, tenant: str) -> None:
        events = self.events(tenant)
        outcomes = await sink.apply(self.partition, events, through=5, expected=-1)
        _, expected = fold([(item.event, item.offset) for item in events if item.event.key == "a"])
        assert [outcome for outcome, item in zip(outcomes, events, strict=True) if item.event.key == "a"] == expected

    async def test_batches_split_anywhere_give_the_same_state(self, sink: ProjectionSink, tenant: str) -> None:
        events = self.events(tenant)
        checkpoint = -1
        for start in range(0, len(events), 2):
            chunk = events[start:start + 2]
            await sink.apply(self.partition, chunk, through=chunk[-1].offset, expected=checkpoint)
            checkpoint = chunk[-1].offset
        assert await self.read(sink, tenant, "a") == {"value": {"n": 2}, "version": 2}
        assert await self.read(sink, tenant, "b") is None

    @pytest.mark.parametrize("cuts", [(1, 20, 41), (41,)], ids=["in batches", "one batch"])
    async def test_a_retry_is_a_duplicate_however_many_commands_came_between(
        self, sink: ProjectionSink, tenant: str, cuts: tuple[int, ...]
    ) -> None:
        ts, between = now_ms(), MAX_REMEMBERED_COMMANDS + 8
        events = [Positioned(Event(PUT, tenant, "hot", {"n": 0}, ts=ts, command_id="retried"), 0)]
        events += [Positioned(Event(PUT, tenant, "hot", {"n": n}, ts=ts + n, command_id=f"other-{n}"), n)
                   for n in range(1, between + 1)]
        events.append(Positioned(Event(PUT, tenant, "hot", {"n": 0}, ts=ts + 99, command_id="retried"), between + 1))
        outcomes, checkpoint = [], -1
        for start, end in zip((0, *cuts), (*cuts, len(events)), strict=True):
            outcomes += await sink.apply(self.partition, events[start:end], through=end - 1, expected=checkpoint)
            checkpoint = end - 1
        last = outcomes[-1]
        assert last is not None and last.status is Status.DUPLICATE and last.version == 0
        assert await self.read(sink, tenant, "hot") == {"value": {"n": between}, "version": between}
        # A later retry of a command from the middle is a duplicate too, in a batch of its own.
        retry = Positioned(Event(PUT, tenant, "hot", {"n": 3}, ts=ts + 100, command_id="other-3"), between + 2)
        [again] = await sink.apply(self.partition, [retry], through=between + 2, expected=between + 1)
        assert again is not None and again.status is Status.DUPLICATE and again.version == 3

    async def test_a_retried_stream_append_is_a_duplicate(self, sink: ProjectionSink, tenant: str) -> None:
        ts = now_ms()
        appends = [Positioned(Event(STREAM_APPEND, tenant, "hot", {"step": n}, ts=ts + n, command_id=f"s{n % 3}"), n)
                   for n in range(5)]
        outcomes = await sink.apply(self.partition, appends, through=4, expected=-1)
        assert [outcome.status if outcome else None for outcome in outcomes] == [
            Status.ACCEPTED, Status.ACCEPTED, Status.ACCEPTED, Status.DUPLICATE, Status.DUPLICATE]
        assert await self.read(sink, tenant, "hot") is None  # a stream is not the key of the same name
