"""`ams reindex` finds and repairs what a corrupted vector view lost, kept stale or invented."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import httpx
import numpy as np
import pytest

from ams.settings import Settings
from commands.envelope import now_ms
from compose.local import LocalStack
from projections.embeddings import UPSERT, EmbeddingOp
from projections.faiss_feed import index_params
from projections.faiss_files import snapshot_path
from projections.faiss_view import FaissView
from projections.milvus_store import MilvusStore, Row
from tests.conftest import token_for
from tests.vector_support import put_all, search

pytestmark = pytest.mark.stack


async def faiss_inventory(settings: Settings, tenant: str) -> dict[str, int]:
    headers = {"Authorization": f"Bearer {token_for(settings, tenant, 'memory:admin')}"}
    async with httpx.AsyncClient(base_url=settings.gateway_url, headers=headers) as client:
        response = await client.get("/v1/vector/inventory")
    assert response.status_code == 200, response.text
    return {key: int(version) for key, version in response.json()["keys"].items()}


def corrupt_milvus(settings: Settings, tenant: str, versions: dict[str, int]) -> None:
    store = MilvusStore(settings.milvus_endpoint)
    try:
        store.follow_live()
        store.client.delete(store.collection(tenant), ids=["k0"])  # missing
        store.tenant_shape(tenant)
        store.upsert(tenant, [Row("k1", versions["k1"] - 1, np.asarray([0, 0, 1], dtype=np.float32), {"n": "old"}),
                              Row("ghost", 0, np.asarray([1, 0, 0], dtype=np.float32), {"n": "ghost"})])
    finally:
        store.close()


def corrupt_faiss_snapshot(settings: Settings, tenant: str, versions: dict[str, int]) -> None:
    path = snapshot_path(settings)
    view = FaissView.load(path, index_params(settings))
    index = view.tenants[tenant]
    row = index.entries.pop("k2").row  # missing
    assert row is not None
    index.alive[row] = False
    index.entries["k3"].version = versions["k3"] - 1  # stale
    index.apply(EmbeddingOp(UPSERT, tenant, "ghost", 0, np.asarray([1, 0, 0], dtype=np.float32), "cosine", {}))
    view.save(path)


async def test_reindex_repairs_corrupted_views(
    stack: LocalStack, settings: Settings, api: httpx.AsyncClient, tenant: str
) -> None:
    token = await put_all(api, {f"k{n}": {"embedding": [1.0, n / 10, 0.0], "n": n} for n in range(6)})
    for backend in ("faiss", "milvus"):
        assert len(await search(api, token, embedding=[1, 0, 0], k=10, backend=backend)) == 6
    truth = await faiss_inventory(settings, tenant)
    assert set(truth) == {f"k{n}" for n in range(6)}

    await asyncio.to_thread(corrupt_milvus, settings, tenant, truth)
    await asyncio.to_thread(stack.down, ["gateway"])  # every gateway process
    await asyncio.to_thread(corrupt_faiss_snapshot, settings, tenant, truth)
    await asyncio.to_thread(stack.start, "gateway")
    assert await faiss_inventory(settings, tenant) != truth

    run = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "ams.cli", "reindex"], env=os.environ.copy(),
                                  capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    rows = {line.split("│")[1].strip(): [int(cell) for cell in line.split("│")[2:6]]
            for line in run.stdout.splitlines() if line.count("│") >= 6 and line.split("│")[1].strip() in
            ("faiss", "milvus")}
    for view in ("faiss", "milvus"):
        checked, missing, stale, orphaned = rows[view]
        assert checked >= 6, run.stdout
        assert missing >= 1 and stale >= 1 and orphaned >= 1, run.stdout

    async with asyncio.timeout(30):
        while await faiss_inventory(settings, tenant) != truth:
            await asyncio.sleep(0.2)
    store = MilvusStore(settings.milvus_endpoint)
    try:
        async with asyncio.timeout(30):
            while await asyncio.to_thread(store.inventory, tenant, now_ms()) != truth:
                await asyncio.sleep(0.2)
    finally:
        store.close()
    for backend in ("faiss", "milvus"):
        found = await search(api, embedding=[1, 0.1, 0], k=10, backend=backend)
        assert {result["key"]: result["version"] for result in found} == truth, backend
        assert {result["key"]: result["value"] for result in found}["k1"] == {"n": 1}
