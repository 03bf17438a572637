"""The embedder: the sink contract, and what it emits to its embeddings topic for each kind of event."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ams.settings import Settings, get_settings
from commands.envelope import DELETE, PATCH, PUT, Event, now_ms
from commands.keys import kafka_key, partition_for
from compose.local import LocalStack
from projections.embedder import EmbedderSink
from projections.embeddings import MARK, decode_op
from projections.sink import Positioned, ProjectionSink
from tests.projections.sink_contract import SinkContract
from tests.support import fold_log_for, read_topic
from tests.vector_support import merge_tokens, search

pytestmark = pytest.mark.stack


@pytest.fixture
async def embeddings_topic() -> AsyncIterator[str]:
    """A topic of each test's own, so its marks never reach the live views nor another test."""
    settings = get_settings()
    name = f"test.embeddings.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(**settings.kafka.client_options())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, settings.partitions, 1)])
        yield name
        await admin.delete_topics([name])
    finally:
        await admin.close()


def isolated(topic: str) -> Settings:
    return dataclasses.replace(get_settings(), redis_prefix=f"test-{uuid.uuid4().hex[:8]}", embeddings_topic=topic)


class TestEmbedderSink(SinkContract):
    @pytest.fixture(autouse=True)
    def _topic(self, embeddings_topic: str) -> None:
        self.topic = embeddings_topic

    async def make_sink(self) -> ProjectionSink:
        return EmbedderSink(isolated(self.topic))

    async def read(self, sink: ProjectionSink, tenant: str, key: str) -> dict[str, Any] | None:
        assert isinstance(sink, EmbedderSink)
        home = partition_for(kafka_key(tenant, key), sink.partitions)
        value, version, deleted = await sink.client.hmget(sink.layout.record(home, tenant, key),
                                                          ["value", "version", "deleted"])
        if value is None or deleted == b"1":
            return None
        assert version is not None
        return {"value": orjson.loads(value), "version": int(version)}


async def test_the_embedder_emits_each_keys_final_vector_state(embeddings_topic: str, tenant: str) -> None:
    settings = isolated(embeddings_topic)
    sink = EmbedderSink(settings)
    await sink.start()
    ts = now_ms()
    partition = partition_for(kafka_key(tenant, "a"), settings.partitions)
    first = [
        Positioned(Event(PUT, tenant, "a", {"embedding": [1, 0, 0], "kind": "fact"}, ts=ts), 0),
        Positioned(Event(PATCH, tenant, "a", {"embedding": [0, 1, 0]}, ts=ts), 1),  # the patched value's vector
        Positioned(Event(PUT, tenant, "b", {"embedding": [0, 0, 1]}, ts=ts, ttl_ms=60_000), 2),
        Positioned(Event(PUT, tenant, "b", {"embedding": [1, 1, 1]}, ts=ts, if_version=99), 3),  # loses
        Positioned(Event(PUT, tenant, "c", {"embedding": [1, 1]}, ts=ts), 4),  # not the tenant's dimension
        Positioned(Event(PUT, tenant, "d", {"text": "embedded in 384 dimensions, not 3"}, ts=ts), 5),
        Positioned(Event(PUT, tenant, "e", {"embedding": [1, 0, 0]}, ts=ts), 6),
        Positioned(Event(DELETE, tenant, "e", ts=ts), 7),  # created and deleted within the batch: nothing
    ]
    second = [
        Positioned(Event(DELETE, tenant, "b", ts=ts), 8),
        Positioned(Event(PUT, tenant, "a", {"kind": "vector removed"}, ts=ts), 9),
    ]
    try:
        await sink.apply(partition, first, through=7, expected=-1)
        await sink.apply(partition, second, through=11, expected=7)
    finally:
        await sink.close()
    ops = [decode_op(record.value) for record in await read_topic(settings, embeddings_topic)]
    ours = [op for op in ops if op.tenant == tenant or (op.op == MARK and op.partition == partition)]
    summary = [(op.key, op.version, op.op, op.vector.tolist() if op.vector is not None else None, op.value,
                op.expires_at is not None) for op in ours if op.op != MARK]  # in log order per partition
    assert sorted(summary, key=lambda item: (item[0], item[1])) == [
        ("a", 1, "upsert", [0.0, 1.0, 0.0], {"kind": "fact"}, False),
        ("a", 9, "delete", None, None, False),
        ("b", 2, "upsert", [0.0, 0.0, 1.0], {}, True),
        ("b", 8, "delete", None, None, False),
    ]
    assert [(op.partition, op.through) for op in ours if op.op == MARK] == [(partition, 7), (partition, 11)]
    assert await sink.dimensions.dimension(tenant) == 3


async def test_killing_the_embedder_mid_stream_loses_nothing_and_repeats_harmlessly(
    stack: LocalStack, settings: Settings, api: httpx.AsyncClient, tenant: str
) -> None:
    async def write(i: int) -> str:
        response = await api.put(f"/v1/kv/item-{i % 30}", json={"embedding": [1.0, i / 300], "i": i},
                                 headers={"Prefer": "respond-async"})
        assert response.status_code == 202, response.text
        return str(response.json()["position"])

    first = await asyncio.gather(*(write(i) for i in range(150)))
    stack.process("projector-embedder").send_signal(signal.SIGKILL)  # some batches emitted but not committed
    second = await asyncio.gather(*(write(i) for i in range(150, 300)))
    embedder = stack.component("projector-embedder")
    await asyncio.to_thread(stack.ensure, embedder)

    expected = {key: record for key, record in (await fold_log_for(settings, tenant)).items() if record is not None}
    assert len(expected) == 30
    for backend in ("faiss", "milvus"):
        found = await search(api, merge_tokens(*first, *second), embedding=[1.0, 0.5], k=100, backend=backend)
        assert {result["key"]: result["version"] for result in found} == {
            key: record.version for key, record in expected.items()}, backend
        assert {result["key"]: result["value"]["i"] for result in found} == {
            key: record.value["i"] for key, record in expected.items()}, backend
