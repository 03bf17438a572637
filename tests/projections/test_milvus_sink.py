"""The Milvus sink's held checkpoints: mark-only batches soon after a write move the checkpoint in memory only.

Against the stack's Milvus Lite, on a partition number no worker projects (removed afterwards).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import numpy as np
import pytest

from ams.settings import Settings
from projections.embeddings import MARK, UPSERT, EmbeddingOp
from projections.milvus_sink import MilvusSink
from projections.sink import CheckpointMoved, Positioned

PARTITION = 97  # beyond any partition the live worker owns


def mark(through: int) -> Positioned[EmbeddingOp]:
    return Positioned(EmbeddingOp(MARK, partition=PARTITION, through=through), offset=0)


def stored(sink: MilvusSink) -> tuple[int, int]:
    return sink.store.checkpoints([PARTITION])[PARTITION]


@pytest.fixture
async def sink(settings: Settings) -> AsyncIterator[MilvusSink]:
    sink = MilvusSink(dataclasses.replace(settings, partitions=PARTITION + 1))
    yield sink
    sink.store.client.delete(sink.store._ensure_checkpoints(), ids=[PARTITION])
    await sink.close()


async def test_mark_only_batches_soon_after_a_write_are_held_then_written(sink: MilvusSink) -> None:
    await sink.apply(PARTITION, [mark(10)], through=0, expected=-1)  # the first write is not held
    assert stored(sink) == (0, 10)
    await sink.apply(PARTITION, [mark(11)], through=1, expected=0)
    await sink.apply(PARTITION, [], through=2, expected=1)  # settling over a marker: held too
    assert stored(sink) == (0, 10)
    assert (await sink.checkpoints())[PARTITION] == 2  # the projector sees where it is
    await sink.write_held()
    assert stored(sink) == (2, 11)


async def test_a_batch_that_changes_rows_writes_the_held_checkpoint_and_its_mark(
    sink: MilvusSink, tenant: str
) -> None:
    await sink.apply(PARTITION, [mark(10)], through=0, expected=-1)
    await sink.apply(PARTITION, [mark(12)], through=1, expected=0)
    vector = np.ones(4, dtype=np.float32)
    upsert = EmbeddingOp(UPSERT, tenant=tenant, key="k", version=5, vector=vector, value={"a": 1})
    await sink.apply(PARTITION, [Positioned(upsert, offset=2)], through=2, expected=1)
    assert stored(sink) == (2, 12)
    assert sink.store.versions(tenant, ["k"]) == {"k": 5}


async def test_a_held_checkpoint_someone_else_moved_is_forgotten_not_written(sink: MilvusSink) -> None:
    await sink.apply(PARTITION, [mark(10)], through=0, expected=-1)
    await sink.apply(PARTITION, [mark(11)], through=1, expected=0)
    await asyncio.to_thread(sink.store.write_checkpoint, PARTITION, 7, 20)  # another worker moved it
    await sink.write_held()
    assert stored(sink) == (7, 20)
    assert (await sink.checkpoints())[PARTITION] == 7


async def test_marks_long_after_a_write_are_written_at_once(sink: MilvusSink, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("projections.milvus_sink.HOLD_SECONDS", 0.0)
    await sink.apply(PARTITION, [mark(10)], through=0, expected=-1)
    await sink.apply(PARTITION, [mark(11)], through=1, expected=0)
    assert stored(sink) == (1, 11)


async def test_a_stale_expected_checkpoint_is_refused_even_right_after_a_write(sink: MilvusSink) -> None:
    await sink.apply(PARTITION, [mark(10)], through=0, expected=-1)
    with pytest.raises(CheckpointMoved):
        await sink.apply(PARTITION, [mark(11)], through=5, expected=3)
    assert stored(sink) == (0, 10)
