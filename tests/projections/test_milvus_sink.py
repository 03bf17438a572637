"""The Milvus view's sink under the checkpoint contract, in generations of its own (never the live one)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from ams.settings import get_settings
from commands.envelope import now_ms
from projections.embeddings import DELETE, MARK, UPSERT, EmbeddingOp
from projections.milvus_sink import MilvusSink
from projections.milvus_store import MilvusStore
from projections.sink import Positioned, ProjectionSink
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
