"""Vector memory end to end: gateway -> log -> embedder -> memory.embeddings -> FAISS and Milvus -> search."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import numpy as np
import pytest

from ams.settings import Settings
from commands.envelope import DELETE, PATCH, Event, now_ms, uuid7
from commands.log import EventLog
from tests.conftest import token_for
from tests.vector_support import append_event, clustered, merge_tokens, put_all, search

pytestmark = pytest.mark.stack
BACKENDS = ("faiss", "milvus")


async def test_a_written_vector_is_found_by_the_seed_clients_call(api: httpx.AsyncClient) -> None:
    token = await put_all(api, {
        "memory/paris": {"embedding": [0.9, 0.1, 0.0], "text": "the trip to Paris", "kind": "trip"},
        "memory/tokyo": {"embedding": [0.0, 1.0, 0.0], "text": "the trip to Tokyo", "kind": "trip"},
        "memory/plain": {"note": "no vector here"},
    })
    for backend in BACKENDS:
        results = await search(api, token, embedding=[1.0, 0.0, 0.0], k=5, backend=backend)
        assert [result["key"] for result in results] == ["memory/paris", "memory/tokyo"], backend
        assert results[0]["value"] == {"text": "the trip to Paris", "kind": "trip"}
        assert results[0]["score"] == pytest.approx(0.9 / np.hypot(0.9, 0.1), abs=1e-5)
        assert isinstance(results[0]["version"], int)
    # The seed client's exact call: no token, no backend; the view catches up within a bounded lag.
    response = await api.post("/v1/vector/search", json={"embedding": [1.0, 0.0, 0.0], "k": 5})
    assert response.status_code == 200 and response.json()[0]["key"] == "memory/paris"


async def test_updates_deletes_and_patches_are_reflected(
    settings: Settings, api: httpx.AsyncClient, tenant: str
) -> None:
    first = await put_all(api, {"a": {"embedding": [1, 0], "n": 1}, "b": {"embedding": [0.9, 0.2], "n": 2},
                                "c": {"embedding": [0.8, 0.3], "n": 3}, "d": {"embedding": [0.7, 0.4]}})
    stale_version = (await api.get("/v1/kv/a")).headers["ETag"].strip('"')
    updated = await put_all(api, {"a": {"embedding": [0, 1], "n": 10}, "d": {"no": "vector any more"}})
    lost = await api.put("/v1/kv/a", json={"embedding": [1, 0], "n": 99}, headers={"If-Match": stale_version})
    assert lost.status_code == 409, lost.text
    deleted = await append_event(settings, Event(DELETE, tenant, "b", id=uuid7(), ts=now_ms()))
    patched = await append_event(settings, Event(PATCH, tenant, "c", {"embedding": [0.1, 1], "tag": "x"},
                                                 id=uuid7(), ts=now_ms()))
    token = merge_tokens(first, updated, lost.headers["X-AMS-Position"], deleted, patched)
    for backend in BACKENDS:
        results = await search(api, token, embedding=[0, 1], k=10, backend=backend)
        assert {result["key"] for result in results} == {"a", "c"}, backend
        by_key = {result["key"]: result for result in results}
        assert by_key["a"]["value"] == {"n": 10} and by_key["a"]["score"] == pytest.approx(1.0, abs=1e-5)
        assert by_key["c"]["value"] == {"n": 3, "tag": "x"}
        assert by_key["c"]["version"] == int(patched.split(":")[1])


async def test_expired_vectors_are_not_found(api: httpx.AsyncClient) -> None:
    response = await api.put("/v1/kv/brief?ttl=1", json={"embedding": [1, 0, 0]})
    keep = await put_all(api, {"kept": {"embedding": [0.9, 0.1, 0]}})
    token = merge_tokens(response.headers["X-AMS-Position"], keep)
    for backend in BACKENDS:
        found = await search(api, token, embedding=[1, 0, 0], k=5, backend=backend)
        assert [result["key"] for result in found] == ["brief", "kept"], backend
    await asyncio.sleep(1.2)
    for backend in BACKENDS:
        assert [result["key"] for result in await search(api, embedding=[1, 0, 0], k=5, backend=backend)] == ["kept"]


HOSTILE_FILTERS = [
    {"kind": 'x" or key != "'}, {"kind": "x') or (1 == 1"}, {"kind": {"ne": "nothing"}},
    {"deleted": False}, {"tenant": {"in": ["a", "b"]}}, {"key": {"gte": 0}},
]


async def test_tenants_never_see_each_others_vectors(settings: Settings, api: httpx.AsyncClient) -> None:
    other = f"t{uuid.uuid4().hex[:12]}"
    headers = {"Authorization": f"Bearer {token_for(settings, other)}"}
    async with httpx.AsyncClient(base_url=settings.gateway_url, headers=headers, timeout=30) as neighbour:
        mine = await put_all(api, {"secret": {"embedding": [1, 0, 0], "kind": "fact"}})
        theirs = await put_all(neighbour, {"public": {"embedding": [0.5, 0.5, 0], "kind": "fact"}})
        token = merge_tokens(mine, theirs)
        for backend in BACKENDS:
            found = await search(neighbour, token, embedding=[1, 0, 0], k=100, backend=backend)
            assert [result["key"] for result in found] == ["public"], backend
            for hostile in HOSTILE_FILTERS:
                response = await neighbour.post("/v1/vector/search", json={
                    "embedding": [1, 0, 0], "k": 100, "backend": backend, "filter": hostile})
                assert response.status_code in (200, 400), response.text
                if response.status_code == 200:
                    assert {result["key"] for result in response.json()} <= {"public"}, (backend, hostile)
        # A tenant's dimension is its own: the neighbour may use another one.
        other_dimension = await neighbour.put("/v1/kv/wide", json={"embedding": [1, 0, 0, 0, 0]})
        assert other_dimension.status_code == 422  # its first vector fixed 3 dimensions


async def test_faiss_and_milvus_agree_on_a_fixture(api: httpx.AsyncClient) -> None:
    data = clustered(300, 16, seed=7)
    values = {f"doc/{row}": {"embedding": vector.tolist(), "group": row % 4, "score": row / 300}
              for row, vector in enumerate(data)}
    token = await put_all(api, values)
    for query in clustered(8, 16, seed=8):
        for query_filter in (None, {"group": {"in": [1, 3]}, "score": {"lt": 0.8}}):
            body = {"embedding": query.tolist(), "k": 10, "filter": query_filter}
            faiss = await search(api, token, backend="faiss", **body)
            milvus = await search(api, token, backend="milvus", **body)
            assert [result["key"] for result in faiss] == [result["key"] for result in milvus]
            assert [result["score"] for result in faiss] == pytest.approx([result["score"] for result in milvus],
                                                                          abs=1e-4)
            assert [result["version"] for result in faiss] == [result["version"] for result in milvus]


async def test_a_wrong_dimension_is_a_422_that_appends_nothing(settings: Settings, api: httpx.AsyncClient) -> None:
    await put_all(api, {"first": {"embedding": [1, 2, 3]}})
    log = EventLog(settings.kafka, settings.events_topic, transactional_id=f"test-{uuid.uuid4()}")
    await log.start()
    try:
        before = await log.end_offsets()
        for bad in ([1, 2], [1, 2, 3, 4], ["a", "b", "c"], [], "1,2,3", [1, 2, True]):
            response = await api.put("/v1/kv/second", json={"embedding": bad})
            assert response.status_code == 422, (bad, response.text)
            assert response.json()["error"]["code"] in ("wrong_dimension", "invalid_vector")
        assert await log.end_offsets() == before
    finally:
        await log.stop()
    assert (await api.get("/v1/kv/second")).status_code == 404


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"embedding": [1, 0, 0], "k": 0}, 400, "invalid_k"),
    ({"embedding": [1, 0, 0], "k": 1001}, 400, "invalid_k"),
    ({"embedding": [1, 0, 0], "k": "5"}, 400, "invalid_k"),
    ({"k": 5}, 400, "invalid_query"),
    ({"embedding": [1, 0, 0], "text": "both"}, 400, "invalid_query"),
    ({"embedding": [1, 0, 0], "limit": 5}, 400, "invalid_query"),
    ({"embedding": [1, 0, 0], "backend": "pinecone"}, 400, "invalid_backend"),
    ({"embedding": [1, 0, 0], "filter": {"kind": {"like": "%"}}}, 400, "invalid_filter"),
    ({"embedding": [1, "x", 0]}, 422, "invalid_vector"),
    ({"embedding": [1, 0]}, 422, "wrong_dimension"),
    ({"text": "what did I do in Paris?"}, 422, "wrong_dimension"),  # the built-in embedder has 384
    ([1, 0, 0], 400, "invalid_query"),
])
async def test_bad_searches_are_clear_4xx_errors(api: httpx.AsyncClient, body: object, status: int, code: str) -> None:
    await search(api, await put_all(api, {"anchor": {"embedding": [1, 0, 0]}}), embedding=[1, 0, 0])
    response = await api.post("/v1/vector/search", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


async def test_positions_report_the_vector_views_lag(api: httpx.AsyncClient) -> None:
    token = await put_all(api, {"x": {"embedding": [1.0]}})
    await search(api, token, embedding=[1.0], k=1)
    positions = (await api.get("/v1/positions")).json()
    partition, offset = map(int, token.split(":"))
    vectors = positions["projections"]["vectors"]
    assert set(vectors) == set(positions["log"])
    assert vectors[str(partition)]["applied"] >= offset
    assert all(entry["lag"] >= 0 for entry in vectors.values())
