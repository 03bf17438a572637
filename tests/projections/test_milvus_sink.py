"""The Milvus view's sink: under the checkpoint contract, in generations of its own (never the live one); and the
live worker's held checkpoints (mark-only batches soon after a write move the checkpoint in memory only), against
the live generation on a partition number no worker projects (removed afterwards)."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest

from ams.settings import Settings, get_settings
from commands.envelope import now_ms
from projections.embeddings import DELETE, MARK, UPSERT, EmbeddingOp
from projections.milvus_sink import MilvusSink
from projections.milvus_store import MilvusStore
from projections.sink import CheckpointMoved, Positioned, ProjectionSink
from tests.projections.sink_contract import CheckpointContract

pytestmark = pytest.mark.stack


def vector(n: int) -> np.ndarray:
    return np.array([1.0, n, 0.5, -n], dtype=np.float32)


class TestMilvusSink(CheckpointContract):
    @pytest.fixture(autouse=True)
    def _generations(self) -> Iterator[None]:
        """Each sink writes a generation no rebuild picks (far above the live one); all dropped afterwards."""
        self.made: list[int] = []
        yield
        store = MilvusStore(get_settings().milvus_endpoint)
        try:
            for generation in self.made:
                store.drop_generation(generation)
        finally:
            store.close()

    async def make_sink(self) -> ProjectionSink:
        generation = random.randrange(1_000_000, 2_000_000)
        self.made.append(generation)
        return MilvusSink(get_settings(), generation=generation)

    def batch(self, tenant: str) -> list[Positioned]:
        ops = [
            EmbeddingOp(UPSERT, tenant, "a", 0, vector(0), value={"n": 0}),
            EmbeddingOp(UPSERT, tenant, "b", 1, vector(1), value={"n": 1}),
            EmbeddingOp(UPSERT, tenant, "a", 2, vector(2), value={"n": 2}),
            EmbeddingOp(UPSERT, tenant, "a", 0, vector(0), value={"n": 0}),  # a late repeat: older, ignored
            EmbeddingOp(DELETE, tenant, "b", 4),
            EmbeddingOp(MARK, partition=self.partition, through=9),
        ]
        return [Positioned(op, offset) for offset, op in enumerate(ops)]

    async def state(self, sink: ProjectionSink, tenant: str) -> Any:
        assert isinstance(sink, MilvusSink)
        return await asyncio.to_thread(sink.store.inventory, tenant, now_ms())

    async def test_the_batch_decides_each_key_by_version(self, sink: ProjectionSink, tenant: str) -> None:
        await sink.apply(self.partition, self.batch(tenant), through=5, expected=-1)
        assert await self.state(sink, tenant) == {"a": 2}
        assert isinstance(sink, MilvusSink)
        assert (await asyncio.to_thread(sink.store.checkpoints, [self.partition]))[self.partition] == (5, 9)


PARTITION = 97  # beyond any partition the live worker owns


def mark(through: int) -> Positioned[EmbeddingOp]:
    return Positioned(EmbeddingOp(MARK, partition=PARTITION, through=through), offset=0)


def stored(live: MilvusSink) -> tuple[int, int]:
    return live.store.checkpoints([PARTITION])[PARTITION]


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[MilvusSink]:
    live = MilvusSink(dataclasses.replace(settings, partitions=PARTITION + 1))
    yield live
    live.store.client.delete(live.store._ensure_checkpoints(), ids=[PARTITION])
    await live.close()


async def test_mark_only_batches_soon_after_a_write_are_held_then_written(live: MilvusSink) -> None:
    await live.apply(PARTITION, [mark(10)], through=0, expected=-1)  # the first write is not held
    assert stored(live) == (0, 10)
    await live.apply(PARTITION, [mark(11)], through=1, expected=0)
    await live.apply(PARTITION, [], through=2, expected=1)  # settling over a marker: held too
    assert stored(live) == (0, 10)
    assert (await live.checkpoints())[PARTITION] == 2  # the projector sees where it is
    await live.write_held()
    assert stored(live) == (2, 11)


async def test_a_batch_that_changes_rows_writes_the_held_checkpoint_and_its_mark(
    live: MilvusSink, tenant: str
) -> None:
    await live.apply(PARTITION, [mark(10)], through=0, expected=-1)
    await live.apply(PARTITION, [mark(12)], through=1, expected=0)
    vector = np.ones(4, dtype=np.float32)
    upsert = EmbeddingOp(UPSERT, tenant=tenant, key="k", version=5, vector=vector, value={"a": 1})
    await live.apply(PARTITION, [Positioned(upsert, offset=2)], through=2, expected=1)
    assert stored(live) == (2, 12)
    assert live.store.versions(tenant, ["k"]) == {"k": 5}


async def test_a_held_checkpoint_someone_else_moved_is_forgotten_not_written(live: MilvusSink) -> None:
    await live.apply(PARTITION, [mark(10)], through=0, expected=-1)
    await live.apply(PARTITION, [mark(11)], through=1, expected=0)
    await asyncio.to_thread(live.store.write_checkpoint, PARTITION, 7, 20)  # another worker moved it
    await live.write_held()
    assert stored(live) == (7, 20)
    assert (await live.checkpoints())[PARTITION] == 7


async def test_marks_long_after_a_write_are_written_at_once(live: MilvusSink, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("projections.milvus_sink.HOLD_SECONDS", 0.0)
    await live.apply(PARTITION, [mark(10)], through=0, expected=-1)
    await live.apply(PARTITION, [mark(11)], through=1, expected=0)
    assert stored(live) == (1, 11)


async def test_a_stale_expected_checkpoint_is_refused_even_right_after_a_write(live: MilvusSink) -> None:
    await live.apply(PARTITION, [mark(10)], through=0, expected=-1)
    with pytest.raises(CheckpointMoved):
        await live.apply(PARTITION, [mark(11)], through=5, expected=3)
    assert stored(live) == (0, 10)
