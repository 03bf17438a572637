"""Search by text through the real stack: the built-in embedder, keyword (BM25) and hybrid modes, filters,
read-your-writes with a consistency token, deletes and expiry, tenant isolation and bad input."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from ams.settings import Settings
from commands.log import EventLog
from tests.conftest import token_for
from tests.vector_support import merge_tokens, put_all, search

pytestmark = pytest.mark.stack
MODES = ("semantic", "keyword", "hybrid")

FACTS = {
    "notes/coffee": {"text": "Alice drinks her espresso without sugar every morning.", "kind": "preference",
                     "score": 0.9},
    "notes/pet": {"text": "Bob owns a golden retriever called Max.", "kind": "fact", "score": 0.4},
    "notes/trip": {"text": "The team offsite is planned in Lisbon in May.", "kind": "event", "score": 0.7},
    "todo/garden": {"text": "Water the tomato plants in the garden.", "kind": "task", "score": 0.2},
}


def keys(results: list[dict[str, Any]]) -> list[str]:
    return [result["key"] for result in results]


async def test_a_paraphrase_sharing_no_word_finds_the_fact_at_the_top(api: httpx.AsyncClient) -> None:
    token = await put_all(api, FACTS)
    results = await search(api, token, text="What does the puppy's owner have at home?", k=4)
    assert keys(results)[0] == "notes/pet"
    assert results[0]["value"] == FACTS["notes/pet"]
    results = await search(api, token, text="How does she take her morning coffee?", k=4)
    assert keys(results)[0] == "notes/coffee"


async def test_keyword_mode_ranks_by_the_words_and_ignores_meaning(api: httpx.AsyncClient) -> None:
    token = await put_all(api, FACTS)
    assert keys(await search(api, token, text="golden retriever", mode="keyword"))[0] == "notes/pet"
    assert await search(api, token, text="puppy owner", mode="keyword") == []  # no shared word, no result
    results = await search(api, token, text="LISBON offsite", mode="keyword")
    assert keys(results) == ["notes/trip"] and results[0]["score"] > 0


async def test_hybrid_mode_fuses_both_rankings(api: httpx.AsyncClient) -> None:
    token = await put_all(api, FACTS)
    results = await search(api, token, text="Max the dog", mode="hybrid", k=4)
    assert keys(results)[0] == "notes/pet"  # first in both rankings
    assert results[0]["score"] == pytest.approx(2 / 61)
    assert len(results) == 4  # semantic ranks every memory; keyword adds its matches


@pytest.mark.parametrize("mode", MODES)
async def test_filters_on_value_fields_and_key_prefix_apply_in_every_mode(api: httpx.AsyncClient, mode: str) -> None:
    token = await put_all(api, FACTS)
    text = "garden plants espresso retriever Lisbon"
    found = await search(api, token, text=text, mode=mode, k=10, filter={"$key_prefix": "notes/"})
    assert set(keys(found)) <= {"notes/coffee", "notes/pet", "notes/trip"} and found
    found = await search(api, token, text=text, mode=mode, k=10, filter={"score": {"$gte": 0.4, "$lt": 0.9}})
    assert set(keys(found)) == {"notes/pet", "notes/trip"}
    found = await search(api, token, text=text, mode=mode, k=10,
                         filter={"kind": {"$in": ["task", "fact"]}, "score": {"$ne": 0.4}})
    assert keys(found) == ["todo/garden"]
    found = await search(api, token, text=text, mode=mode, k=10, filter={"kind": {"$eq": "preference"},
                                                                            "$key_prefix": "todo/"})
    assert found == []


@pytest.mark.parametrize("mode", MODES)
async def test_a_search_with_a_writes_token_sees_the_write(api: httpx.AsyncClient, mode: str) -> None:
    word = f"zq{uuid.uuid4().hex[:8]}"
    response = await api.put("/v1/kv/fresh", json={"text": f"The new locker code is {word}."})
    assert response.status_code == 200, response.text
    token = response.headers["X-AMS-Position"]
    headers = {"X-AMS-Min-Position": token}
    body = {"text": f"locker code {word}", "mode": mode}
    for _ in range(30):  # the view answers once it has applied the token, or a clear 504: never a silent miss
        answer = await api.post("/v1/vector/search", json=body, headers=headers)
        if answer.status_code == 200:
            break
        assert answer.status_code == 504 and answer.json()["error"]["code"] == "consistency_timeout", answer.text
    assert answer.status_code == 200 and keys(answer.json()) == ["fresh"], answer.text


async def test_deleted_overwritten_and_expired_memories_are_gone_from_every_mode(api: httpx.AsyncClient) -> None:
    await put_all(api, FACTS)
    expiring = await api.put("/v1/kv/notes/expiring?ttl=1", json={"text": "The golden retriever's vet visit."})
    assert expiring.status_code == 200
    deleted = await api.delete("/v1/kv/notes/pet")
    assert deleted.status_code in (200, 204), deleted.text
    overwritten = await api.put("/v1/kv/notes/trip", json={"text": "The offsite was cancelled.", "kind": "event"})
    token = merge_tokens(deleted.headers["X-AMS-Position"], overwritten.headers["X-AMS-Position"])
    await asyncio.sleep(1.2)  # past the expiry
    for mode in MODES:
        for text in ("golden retriever Max", "Lisbon in May"):
            found = await search(api, token, text=text, mode=mode, k=10)
            assert not {"notes/pet", "notes/expiring"} & set(keys(found)), (mode, text)
            trip = [result for result in found if result["key"] == "notes/trip"]
            assert all(result["value"]["text"] == "The offsite was cancelled." for result in trip)
        assert "notes/trip" not in keys(await search(api, token, text="Lisbon", mode="keyword"))


@pytest.mark.parametrize("mode", MODES)
async def test_tenants_never_see_each_other_in_any_mode(settings: Settings, api: httpx.AsyncClient, mode: str) -> None:
    token = await put_all(api, {"secret": {"text": "The vault password is hunter2.", "kind": "secret"}})
    other = f"t{uuid.uuid4().hex[:12]}"
    headers = {"Authorization": f"Bearer {token_for(settings, other)}", "X-AMS-Min-Position": token}
    async with httpx.AsyncClient(base_url=settings.gateway_url, headers=headers, timeout=30) as intruder:
        own = await intruder.put("/v1/kv/mine", json={"text": "My vault password.", "kind": "secret"})
        assert own.status_code == 200
        for hostile in ({}, {"kind": "secret"}, {"$key_prefix": "s"}, {"tenant": api.headers["Authorization"]}):
            answer = await intruder.post("/v1/vector/search", json={"text": "vault password hunter2", "mode": mode,
                                                                   "filter": hostile, "k": 50})
            assert answer.status_code in (200, 504), answer.text
            if answer.status_code == 200:
                assert "secret" not in keys(answer.json()), hostile
        for injection in ({"tenant|secret": 1}, {"kind": {"$where": "1"}}, {"$tenant": "x"}):
            answer = await intruder.post("/v1/vector/search", json={"text": "vault", "mode": mode,
                                                                   "filter": injection})
            assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_filter", answer.text


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"text": "x", "mode": "fuzzy"}, 400, "invalid_mode"),
    ({"text": "x", "filter": {"kind": {"$regex": "."}}}, 400, "invalid_filter"),
    ({"text": "x" * 5000}, 413, "text_too_long"),
    ({"text": "   "}, 400, "invalid_text"),
    ({"embedding": [0.1, 0.2], "mode": "keyword"}, 400, "invalid_query"),
    ({"embedding": [0.1] * 384, "text": "x", "mode": "keyword"}, 400, "invalid_query"),
    ({"embedding": [0.1, 0.2]}, 422, "wrong_dimension"),
    ({"text": "x", "mode": "hybrid", "embedding": [0.1, 0.2]}, 422, "wrong_dimension"),
    ({"text": "x", "mode": "keyword", "backend": "milvus"}, 422, "no_keyword_index"),
    ({"text": "x", "backend": "milvus", "filter": {"$key_prefix": "a"}}, 400, "invalid_filter"),
])
async def test_bad_searches_are_clear_4xx_and_change_nothing(
    settings: Settings, api: httpx.AsyncClient, body: dict[str, Any], status: int, code: str
) -> None:
    await search(api, await put_all(api, {"anchor": {"text": "an anchor"}}), text="anchor")
    log = EventLog(settings.kafka, settings.events_topic, transactional_id=f"test-{uuid.uuid4()}")
    await log.start()
    try:
        before = await log.end_offsets()
        response = await api.post("/v1/vector/search", json=body)
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code
        assert await log.end_offsets() == before
    finally:
        await log.stop()


async def test_a_value_names_its_own_text_fields_or_opts_out(api: httpx.AsyncClient) -> None:
    token = await put_all(api, {
        "doc/named": {"title": "Quarterly revenue grew by a third.", "body": "ignored words", "_index": ["title"]},
        "doc/optout": {"text": "Quarterly revenue grew by a third.", "_index": False},
    })
    found = await search(api, token, text="income rose", k=5)
    assert keys(found) == ["doc/named"]
