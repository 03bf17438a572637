"""A sandbox's vector view through the real stack: its own embedder output, its own FAISS view, tenant
filtering, isolation from live vectors, and a drop that leaves no trace."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from ams.namespaces import ALL_TENANTS, sandbox
from ams.settings import Settings
from replay.sandboxes import create_sandbox, drop_sandbox
from tests.conftest import token_for
from tests.replay.digests import end_offsets
from tests.replay.test_sandboxes import admin, make_sandbox
from tests.support import topic_exists
from tests.vector_support import put_all, search

pytestmark = pytest.mark.stack
__all__ = ["admin"]  # the fixture, shared with the sandbox tests


async def sandbox_search(api: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> list[dict[str, Any]]:
    """Search the sandbox named in ``headers``, waiting (as `search` does) for its view to reach the token."""
    async with asyncio.timeout(60):
        while True:
            response = await api.post("/v1/vector/search", json=body, headers=headers)
            if response.status_code != 504:
                break
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()
    return results


async def redis_keys(settings: Settings, prefix: str) -> list[bytes]:
    client = aioredis.from_url(settings.redis_url)
    try:
        return [name async for name in client.scan_iter(match=f"{prefix}:*", count=1000)]
    finally:
        await client.aclose()


async def test_a_sandbox_until_a_position_searches_exactly_the_vectors_of_that_state(
    api: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    await put_all(api, {"a": {"embedding": [1, 0, 0], "n": 1}, "b": {"embedding": [0, 1, 0], "n": 2},
                        "plain": {"no": "vector"}})
    cut = await api.put("/v1/kv/c", json={"embedding": [0, 0, 1], "n": 3})
    later = await put_all(api, {"a": {"embedding": [0, 1, 0], "n": 10}, "d": {"embedding": [1, 0.1, 0], "n": 4}})
    deleted = await api.delete("/v1/kv/b")
    assert deleted.status_code in (200, 204), deleted.text
    _, headers = await make_sandbox(admin, until=cut.headers["X-AMS-Position"])

    results = await sandbox_search(api, headers, embedding=[1, 0, 0], k=10)
    assert {result["key"]: result["value"] for result in results} == {"a": {"n": 1}, "b": {"n": 2}, "c": {"n": 3}}
    assert results[0]["key"] == "a" and results[0]["score"] == pytest.approx(1.0, abs=1e-5)
    live = await search(api, later, embedding=[1, 0, 0], k=10)  # live memory is as it was
    assert {result["key"]: result["value"] for result in live} == {"a": {"n": 10}, "c": {"n": 3}, "d": {"n": 4}}


async def test_vectors_written_to_a_sandbox_are_searchable_there_and_never_reach_live_vectors(
    api: httpx.AsyncClient, admin: httpx.AsyncClient, settings: Settings
) -> None:
    base = await put_all(api, {"base": {"embedding": [1, 0], "n": 0}})
    await search(api, base, embedding=[1, 0], k=5)  # the live view has it: nothing of it is still in flight
    name, headers = await make_sandbox(admin)
    live_stream = await end_offsets(settings, settings.embeddings_topic)
    written = await api.put("/v1/kv/rerun", json={"embedding": [0, 1], "n": 1}, headers={"X-AMS-Sandbox": name})
    assert written.status_code == 200, written.text

    mine = await sandbox_search(api, {"X-AMS-Sandbox": name, "X-AMS-Min-Position": written.headers["X-AMS-Position"]},
                                embedding=[0, 1], k=5)
    assert [result["key"] for result in mine] == ["rerun", "base"]
    assert [result["key"] for result in await search(api, base, embedding=[0, 1], k=5)] == ["base"]
    assert await end_offsets(settings, settings.embeddings_topic) == live_stream  # the live stream is untouched
    milvus = await api.post("/v1/vector/search", json={"embedding": [0, 1], "backend": "milvus"}, headers=headers)
    assert milvus.status_code == 422 and milvus.json()["error"]["code"] == "no_milvus_view"


async def test_a_sandboxs_vectors_are_filtered_by_tenant_and_unreachable_from_other_tenants(
    api: httpx.AsyncClient, admin: httpx.AsyncClient, settings: Settings, tenant: str
) -> None:
    other = f"t{uuid.uuid4().hex[:12]}"
    async with httpx.AsyncClient(base_url=settings.gateway_url, timeout=30,
                                 headers={"Authorization": f"Bearer {token_for(settings, other)}"}) as intruder:
        await put_all(intruder, {"theirs": {"embedding": [1, 0], "who": "other"}})
        await put_all(api, {"mine": {"embedding": [1, 0], "who": "me"}})
        name, headers = await make_sandbox(admin)
        refused = await intruder.post("/v1/vector/search", json={"embedding": [1, 0]}, headers={"X-AMS-Sandbox": name})
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "no_sandbox"
        assert [result["key"] for result in await sandbox_search(api, headers, embedding=[1, 0])] == ["mine"]

        # An operator's sandbox holds every tenant's events; each tenant still searches only its own vectors.
        everyone = f"ops-{uuid.uuid4().hex[:8]}"
        spec = await create_sandbox(settings, ALL_TENANTS, everyone)
        try:
            for client, who in ((api, "me"), (intruder, "other")):
                wanted = {"X-AMS-Sandbox": everyone, "X-AMS-Min-Position": spec.position}
                async with asyncio.timeout(30):  # the gateway serves it once it reads the registry
                    while (await client.post("/v1/vector/search", json={"embedding": [1, 0]},
                                             headers=wanted)).status_code == 404:
                        await asyncio.sleep(0.2)
                found = await sandbox_search(client, wanted, embedding=[1, 0], k=1000)
                assert {result["value"]["who"] for result in found} == {who}
        finally:
            await drop_sandbox(settings, ALL_TENANTS, everyone)


async def test_drop_removes_every_vector_trace(
    api: httpx.AsyncClient, admin: httpx.AsyncClient, settings: Settings, tenant: str
) -> None:
    name, headers = await make_sandbox(admin)
    written = await api.put("/v1/kv/v", json={"embedding": [1, 0], "n": 1}, headers={"X-AMS-Sandbox": name})
    found = await sandbox_search(api, {"X-AMS-Sandbox": name, "X-AMS-Min-Position": written.headers["X-AMS-Position"]},
                                 embedding=[1, 0])
    assert [result["key"] for result in found] == ["v"]
    namespace = sandbox(settings, tenant, name)
    assert await topic_exists(settings, namespace.embeddings_topic)
    assert await redis_keys(settings, namespace.embedder_prefix)

    assert (await admin.delete(f"/v1/sandboxes/{name}")).status_code == 200
    async with asyncio.timeout(30):
        while (await api.post("/v1/vector/search", json={"embedding": [1, 0]}, headers=headers)).status_code != 404 \
                or await redis_keys(settings, namespace.embedder_prefix):
            await asyncio.sleep(0.2)
    assert not await topic_exists(settings, namespace.embeddings_topic)
    vector_files = settings.home / "vectors"
    assert not [path for path in vector_files.rglob("*") if name in str(path)]  # a sandbox's view is in memory
