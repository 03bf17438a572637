"""The contract every projection sink honours. Each adapter's test module subclasses `SinkContract`.

Modelled on eventsourcing's recorder test cases: one set of expectations, many stores.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import pytest

from commands.envelope import DELETE, PUT, Event, now_ms
from commands.fold import Status, fold
from projections.sink import CheckpointMoved, Positioned, ProjectionSink


class SinkContract(ABC):
    partition = 0

    @abstractmethod
    async def make_sink(self) -> ProjectionSink:
        """A sink over a fresh, empty namespace of the real store."""

    @abstractmethod
    async def read(self, sink: ProjectionSink, tenant: str, key: str) -> dict[str, Any] | None:
        """The key as a reader of this store sees it: {"value": ..., "version": ...}, or None."""

    @pytest.fixture
    async def sink(self) -> Any:
        sink = await self.make_sink()
        await sink.start()
        yield sink
        await sink.close()

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

    async def test_a_stale_expected_checkpoint_changes_nothing(self, sink: ProjectionSink, tenant: str) -> None:
        events = self.events(tenant)
        await sink.apply(self.partition, events[:2], through=1, expected=-1)
        with pytest.raises(CheckpointMoved) as raised:
            await sink.apply(self.partition, events[2:], through=5, expected=-1)
        assert raised.value.found == 1
        assert (await sink.checkpoints())[self.partition] == 1
        assert await self.read(sink, tenant, "a") == {"value": {"n": 1}, "version": 0}

    async def test_batches_split_anywhere_give_the_same_state(self, sink: ProjectionSink, tenant: str) -> None:
        events = self.events(tenant)
        checkpoint = -1
        for start in range(0, len(events), 2):
            chunk = events[start:start + 2]
            await sink.apply(self.partition, chunk, through=chunk[-1].offset, expected=checkpoint)
            checkpoint = chunk[-1].offset
        assert await self.read(sink, tenant, "a") == {"value": {"n": 2}, "version": 2}
        assert await self.read(sink, tenant, "b") is None

    async def test_the_checkpoint_moves_past_records_that_carried_no_event(self, sink: ProjectionSink) -> None:
        await sink.apply(self.partition, [], through=41, expected=-1)
        assert (await sink.checkpoints())[self.partition] == 41
