"""Rebuilding the vector views (FAISS snapshot, Milvus collections) from memory.embeddings beside the live ones."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import numpy as np
import pytest
import redis.asyncio as aioredis
from aiokafka import TopicPartition

from ams.settings import Settings
from commands.envelope import now_ms
from projections.faiss_feed import apply_batch, index_params
from projections.faiss_files import newest_generation, published, snapshot_path
from projections.faiss_view import FaissView
from projections.milvus_sink import MilvusSink
from projections.milvus_store import LIVE_ALIAS, MilvusStore, checkpoints_name
from projections.redis_layout import RedisLayout
from projections.worker import web_port
from replay.catch_up import Builder, Tracker, progress_display, started_consumer
from replay.rebuild_state import RebuildState
from replay.rebuild_vectors import milvus_projector, rebuild_vectors
from tests.conftest import token_for
from tests.replay.digests import kill_rebuild_midway
from tests.vector_support import merge_tokens, put_all, search

pytestmark = pytest.mark.stack
BACKENDS = ("faiss", "milvus")


async def vector_history(api: httpx.AsyncClient) -> str:
    """Upserts, a replacement, a value losing its vector, a delete, a lost condition, a patch and TTLs;
    returns the position covering all of them."""
    first = await put_all(api, {f"v{n}": {"embedding": [1.0, n / 10, 0.0], "n": n} for n in range(8)})
    stale = (await api.get("/v1/kv/v1")).headers["ETag"]
    tokens = [first, await put_all(api, {"v1": {"embedding": [0.0, 1.0, 0.0], "n": 10}, "v2": {"plain": True}})]
    lost = await api.put("/v1/kv/v1", json={"embedding": [1, 0, 0]}, headers={"If-Match": stale})
    assert lost.status_code == 409
    deleted = await api.delete("/v1/kv/v3")
    patched = await api.patch("/v1/kv/v4", content=b'{"embedding": [0, 0, 1], "tag": "x"}',
                              headers={"Content-Type": "application/merge-patch+json"})
    short = await api.put("/v1/kv/short", json={"embedding": [1.0, 1.0, 0.0]}, params={"ttl": "1"})
    long = await api.put("/v1/kv/long", json={"embedding": [1.0, 1.0, 1.0]}, params={"ttl": "3600"})
    for response in (lost, deleted, patched, short, long):
        tokens.append(response.headers["X-AMS-Position"])
    return merge_tokens(*tokens)


def faiss_digest(view: FaissView, tenant: str) -> dict[str, Any]:
    """Each key of the tenant's index: version, value, expiry and vector (row numbers left out: they depend on
    when the index compacted)."""
    index = view.tenants.get(tenant)
    if index is None:
        return {}
    return {key: (entry.version, entry.value, entry.expires_at,
                  None if entry.row is None else index.vectors[entry.row].round(6).tolist())
            for key, entry in index.entries.items()}


def milvus_digest(settings: Settings, tenant: str) -> dict[str, Any]:
    """Each live key of the tenant's collection: version, expiry, value and vector. Tombstones are left out:
    whether a deleted key has one depends on batching (a batch that creates a key and deletes it, for a
    tenant with no collection yet, writes nothing at all), and an absent row reads as deleted all the same."""
    store = MilvusStore(settings.milvus_endpoint)
    try:
        store.follow_live()
        if store.tenant_shape(tenant) is None:
            return {}
        rows = store.client.query(store.collection(tenant), filter='key != ""',
                                  output_fields=["key", "version", "deleted", "expires_at", "value", "vector"])
        return {row["key"]: (row["version"], row["expires_at"], row["value"],
                             np.round(np.asarray(row["vector"]), 6).tolist())
                for row in rows if not row["deleted"]}
    finally:
        store.close()


async def fresh_faiss_view(settings: Settings) -> FaissView:
    """A FAISS view of memory.embeddings from offset 0 to its head, built here from nothing."""
    view = FaissView(index_params(settings))
    consumer = await started_consumer(settings)
    try:
        partitions = [TopicPartition(settings.embeddings_topic, p) for p in range(settings.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            await apply_batch(view, await consumer.getmany(timeout_ms=500, max_records=5000))
    finally:
        await consumer.stop()
    return view


async def wait_both(api: httpx.AsyncClient, token: str, expected: set[str]) -> None:
    for backend in BACKENDS:
        found = await search(api, token, embedding=[1.0, 0.0, 0.0], k=50, backend=backend)
        assert {result["key"] for result in found} == expected, backend


EXPECTED = {"v0", "v1", "v4", "v5", "v6", "v7", "long"}  # v2 lost its vector, v3 deleted, short expired


async def test_rebuilt_vector_views_equal_the_live_ones_and_searches_stay_correct_meanwhile(
    api: httpx.AsyncClient, settings: Settings, tenant: str
) -> None:
    token = await vector_history(api)
    await asyncio.sleep(1.1)  # "short" expires
    await wait_both(api, token, EXPECTED)
    milvus_before = await asyncio.to_thread(milvus_digest, settings, tenant)
    faiss_generation = newest_generation(settings)
    stop = asyncio.Event()
    during: set[str] = set()

    async def search_and_write_during_the_rebuild() -> str:
        written = token
        step = 0
        while not stop.is_set():
            step += 1
            for backend in BACKENDS:
                found = await search(api, written, embedding=[1.0, 0.0, 0.0], k=50, backend=backend)
                assert {result["key"] for result in found} == EXPECTED | during, backend
            key = f"during{step % 3}"
            written = merge_tokens(written, await put_all(api, {key: {"embedding": [0.0, 1.0, float(step)]}}))
            during.add(key)
        return written

    traffic = asyncio.create_task(search_and_write_during_the_rebuild())
    state = await rebuild_vectors(settings, quiet=True)
    stop.set()
    written = await traffic
    assert state.state == "done", state

    # Milvus: one alias switched to the new generation's collections (Milvus Lite supports aliases), the
    # retired generation dropped; FAISS: a newer generation published, taken by the gateway, the older gone.
    store = MilvusStore(settings.milvus_endpoint)
    try:
        assert store.live_generation() == state.generation >= 1
        assert store.client.describe_alias(LIVE_ALIAS)["collection_name"] == checkpoints_name(state.generation)
        assert store.generations() == {state.generation}
    finally:
        store.close()
    assert newest_generation(settings) == faiss_generation + 1 and set(published(settings)) == {faiss_generation + 1}

    # The live workers and the gateway carry on in the new generations.
    after = merge_tokens(written, await put_all(api, {"after": {"embedding": [1.0, 0.0, 0.0]}}))
    for backend in BACKENDS:
        found = await search(api, after, embedding=[1.0, 0.0, 0.0], k=50, backend=backend)
        assert {result["key"] for result in found} == EXPECTED | during | {"after"}, backend

    # Identical to the live ones: Milvus as it was before, FAISS as a view built here from nothing.
    history = EXPECTED | {"v2", "v3", "short"}
    milvus_after = await asyncio.to_thread(milvus_digest, settings, tenant)
    assert {key: row for key, row in milvus_after.items() if key in history} == milvus_before
    fresh = await fresh_faiss_view(settings)
    rebuilt = await asyncio.to_thread(FaissView.load, snapshot_path(settings), index_params(settings))
    assert ({key: row for key, row in faiss_digest(rebuilt, tenant).items() if key in history}
            == {key: row for key, row in faiss_digest(fresh, tenant).items() if key in history})
    admin = {"Authorization": f"Bearer {token_for(settings, tenant, 'memory:admin')}"}
    served = (await api.get("/v1/vector/inventory", headers=admin)).json()["keys"]
    assert served == fresh.tenants[tenant].inventory(now_ms())


async def test_a_vectors_rebuild_killed_midway_leaves_live_searches_correct_and_resumes(
    api: httpx.AsyncClient, settings: Settings, tenant: str
) -> None:
    token = await vector_history(api)
    await asyncio.sleep(1.1)
    await wait_both(api, token, EXPECTED)
    store = MilvusStore(settings.milvus_endpoint)
    live = store.live_generation()
    await kill_rebuild_midway(settings, "vectors")
    await wait_both(api, token, EXPECTED)  # the live views answer as before

    state = await rebuild_vectors(settings, quiet=True)
    assert state.state == "done"
    try:
        assert store.live_generation() == state.generation > live
        assert store.generations() == {state.generation}
    finally:
        store.close()
    await wait_both(api, token, EXPECTED)
    assert milvus_digest(settings, tenant).keys() >= EXPECTED


async def milvus_recoveries(settings: Settings) -> float:
    """How many partitions the live Milvus worker has caught up from the log (its Prometheus counter)."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{web_port(settings, 'milvus')}/metrics")).text
    counter = 'ams_projection_recoveries_total{projection="milvus"} '
    return sum(float(line.removeprefix(counter)) for line in text.splitlines() if line.startswith(counter))


async def test_a_milvus_generation_switched_in_behind_the_live_worker_is_caught_up_from_the_log(
    api: httpx.AsyncClient, settings: Settings, tenant: str
) -> None:
    """The live worker may apply more between a rebuild's last step and its switch: the new generation is
    then behind it, and the worker catches it up from the log (`MilvusSink`), with no search missing a write."""
    token = await vector_history(api)
    await asyncio.sleep(1.1)
    await wait_both(api, token, EXPECTED)
    before = await asyncio.to_thread(milvus_digest, settings, tenant)
    store = MilvusStore(settings.milvus_endpoint)
    live = store.live_generation()
    sink = MilvusSink(settings, generation=live + 1)
    projector = milvus_projector(settings, sink)
    consumer = await started_consumer(settings)
    redis = aioredis.from_url(settings.redis_url)
    try:
        layout = RedisLayout(f"test-{tenant}")
        builder = Builder(projector, consumer, settings.embeddings_topic, settings.partitions,
                          Tracker(RebuildState("behind", live + 1), redis, layout, progress_display(quiet=True)))
        await builder.start()
        # The tenant's own writes are the last ones of their partitions: stop two operations short of them.
        live_checkpoints = await asyncio.to_thread(store.checkpoints, range(settings.partitions))
        await builder.through({partition: offset - 2 for partition, (offset, _) in live_checkpoints.items()})
        recovered = await milvus_recoveries(settings)
        await asyncio.to_thread(sink.store.switch_live)

        after = merge_tokens(token, await put_all(api, {"after": {"embedding": [1.0, 0.0, 0.0]}}))
        await wait_both(api, after, EXPECTED | {"after"})
        caught_up = await asyncio.to_thread(milvus_digest, settings, tenant)
        assert {key: row for key, row in caught_up.items() if key != "after"} == before
        assert await milvus_recoveries(settings) > recovered  # the worker caught the new generation up
    finally:
        await consumer.stop()
        await projector.dead_letters.close()
        await sink.close()
        await redis.aclose()
        await asyncio.to_thread(store.drop_generation, live)
        store.close()
