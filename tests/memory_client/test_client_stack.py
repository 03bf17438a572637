"""The client against the real running gateway (Kafka, the Redis projection, the Starlette gateway)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from ams.settings import Settings
from memory_client import (
    AsyncMemoryClient,
    Conflict,
    Delete,
    Forbidden,
    InvalidRequest,
    KeyNotFound,
    MemoryClient,
    Patch,
    PayloadTooLarge,
    Put,
    Unauthorized,
)
from tests.conftest import token_for

pytestmark = pytest.mark.stack


@pytest.fixture
def base_url(settings: Settings) -> str:
    return f"{settings.gateway_url}/v1"


@pytest.fixture
def memory(settings: Settings, tenant: str, base_url: str) -> Iterator[MemoryClient]:
    with MemoryClient(base_url, token_for(settings, tenant)) as client:
        yield client


@pytest.fixture
async def amemory(settings: Settings, tenant: str, base_url: str) -> AsyncIterator[AsyncMemoryClient]:
    async with AsyncMemoryClient(base_url, token_for(settings, tenant)) as client:
        yield client


# ----------------------------------------------------------------------------------------- reads and writes


def test_the_seed_documents_client_round_trips_a_value(settings: Settings, tenant: str, base_url: str) -> None:
    client = MemoryClient(base_url, token_for(settings, tenant))
    value = {"step": 3, "plan": ["search", "summarise"], "score": 0.25, "done": False, "note": None, "é": "☃"}
    written = client.set("session:1234", value)
    assert written.status == "accepted"
    assert written.key == "session:1234"
    assert client.get("session:1234") == value
    assert client.get_versioned("session:1234").version == written.version == written.offset
    client.close()


def test_an_eventual_write_is_read_back_at_once_through_the_session(memory: MemoryClient) -> None:
    for step in range(20):
        written = memory.set("fact:counter", step, wait=False)
        assert written.pending and written.version is None
        assert memory.get("fact:counter") == step
    assert f"{written.partition}:{written.offset}" in (memory.session_token or "").split(",")


async def test_the_async_client_reads_its_own_eventual_writes(amemory: AsyncMemoryClient) -> None:
    for step in range(20):
        assert (await amemory.set("fact:async", {"step": step}, wait=False)).status == "pending"
        assert await amemory.get("fact:async") == {"step": step}


def test_a_session_token_carries_read_your_writes_to_another_client(
        settings: Settings, tenant: str, base_url: str, memory: MemoryClient) -> None:
    with MemoryClient(base_url, token_for(settings, tenant), session=False) as reader:
        for step in range(10):
            memory.set("fact:shared", step, wait=False)
            reader.observe(memory.session_token or "")
            assert reader.get("fact:shared") == step


def test_any_json_value_comes_back_exactly(memory: MemoryClient) -> None:
    values: list[Any] = [None, 0, -1.5, "", "text", [], {}, [1, [2, {"3": None}]], True]
    for index, value in enumerate(values):
        memory.set(f"values/{index}", value)
        assert memory.get(f"values/{index}") == value


def test_keys_with_every_allowed_character_round_trip(memory: MemoryClient) -> None:
    key = "user@example.com:a=b+c/agents/a-1/notes_v2.json"
    memory.set(key, "ok")
    assert memory.get(key) == "ok"
    assert [info.key for info in memory.keys("user@")] == [key]


def test_a_dot_segment_is_refused_instead_of_writing_another_key(memory: MemoryClient) -> None:
    with pytest.raises(InvalidRequest, match=r"'\.\.' segment"):
        memory.set("a/../b", 1)
    with pytest.raises(InvalidRequest, match="outside A-Z"):
        memory.set("has space", 1)
    assert memory.get("b", None) is None


def test_an_absent_key_raises_key_not_found_or_gives_the_default(memory: MemoryClient) -> None:
    with pytest.raises(KeyNotFound, match="never-written") as raised:
        memory.get("never-written")
    assert (raised.value.status, raised.value.code) == (404, "not_found")
    assert memory.get("never-written", {"fresh": True}) == {"fresh": True}


def test_a_value_over_the_limit_is_payload_too_large(memory: MemoryClient, settings: Settings) -> None:
    with pytest.raises(PayloadTooLarge, match=f"limit is {settings.max_value_bytes} bytes"):
        memory.set("big", "x" * settings.max_value_bytes)
    assert memory.get("big", None) is None


# ----------------------------------------------------------------------------------------- conditions


def test_a_stale_conditional_write_raises_conflict_with_the_servers_reason(memory: MemoryClient) -> None:
    first = memory.set("plan", {"v": 1})
    second = memory.set("plan", {"v": 2}, if_version=first.version)
    assert second.status == "accepted"
    with pytest.raises(Conflict) as raised:
        memory.set("plan", {"v": 3}, if_version=first.version)
    error = raised.value
    assert error.status == 409 and error.code == "conflict"
    assert f"key is at version {second.version}" in str(error)
    assert f"required version {first.version}" in str(error)
    assert error.position is not None
    assert memory.get_versioned("plan").value == {"v": 2}


def test_create_only_loses_when_the_key_exists(memory: MemoryClient) -> None:
    assert memory.set("lock", "me", if_absent=True).status == "accepted"
    with pytest.raises(Conflict):
        memory.set("lock", "you", if_absent=True)
    assert memory.get("lock") == "me"


async def test_two_concurrent_conditional_writers_exactly_one_wins(amemory: AsyncMemoryClient) -> None:
    base = await amemory.set("leader", None)
    outcomes = await asyncio.gather(amemory.set("leader", "a", if_version=base.version),
                                    amemory.set("leader", "b", if_version=base.version), return_exceptions=True)
    winners = [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]
    losers = [outcome for outcome in outcomes if isinstance(outcome, Conflict)]
    assert len(winners) == 1 and len(losers) == 1
    assert await amemory.get("leader") == ("a" if outcomes[0] is winners[0] else "b")


def test_a_retried_command_applies_once(memory: MemoryClient) -> None:
    first = memory.set("charge", 100, idempotency_key="charge-42")
    retry = memory.set("charge", 200, idempotency_key="charge-42")
    assert (first.status, retry.status, retry.version) == ("accepted", "duplicate", first.version)
    assert memory.get("charge") == 100


def test_a_value_with_a_ttl_expires(memory: MemoryClient) -> None:
    memory.set("otp", "123456", ttl=1)
    assert memory.get("otp") == "123456"
    time.sleep(1.3)
    with pytest.raises(KeyNotFound):
        memory.get("otp")


# ----------------------------------------------------------------------------------------- auth and consistency


def test_a_bad_token_is_unauthorized(base_url: str) -> None:
    with MemoryClient(base_url, "not-a-jwt") as stranger:
        with pytest.raises(Unauthorized, match="invalid token") as raised:
            stranger.get("session:1234")
    assert raised.value.status == 401


def test_a_read_only_token_cannot_write(settings: Settings, tenant: str, base_url: str) -> None:
    with MemoryClient(base_url, token_for(settings, tenant, "memory:read")) as reader:
        with pytest.raises(Forbidden, match="memory:write"):
            reader.set("k", 1)


def test_another_tenants_key_is_simply_not_there(settings: Settings, tenant: str, base_url: str,
                                                 memory: MemoryClient) -> None:
    memory.set("secret", "mine")
    with MemoryClient(base_url, token_for(settings, f"{tenant}-other")) as other:
        with pytest.raises(KeyNotFound):
            other.get("secret")
        assert list(other.keys()) == []


def test_a_position_past_the_end_of_the_log_is_refused_at_once(settings: Settings, tenant: str,
                                                               base_url: str) -> None:
    with MemoryClient(base_url, token_for(settings, tenant)) as client:
        client.observe("0:999999999999")
        with pytest.raises(InvalidRequest, match="0:999999999999") as raised:
            client.get("anything")
    assert (raised.value.status, raised.value.code) == (400, "position_beyond_log")


# ----------------------------------------------------------------------------- delete, patch, batch, list, streams


def test_delete_removes_the_key_and_honours_its_condition(memory: MemoryClient) -> None:
    written = memory.set("doomed", 1)
    memory.set("doomed", 2)
    with pytest.raises(Conflict, match="required version"):
        memory.delete("doomed", if_version=written.version)
    assert memory.get("doomed") == 2
    deleted = memory.delete("doomed")
    assert deleted.status == "accepted"
    with pytest.raises(KeyNotFound):
        memory.get("doomed")


def test_an_eventual_delete_is_read_at_once(memory: MemoryClient) -> None:
    memory.set("gone-soon", 1)
    assert memory.delete("gone-soon", wait=False).pending
    assert memory.get("gone-soon", "absent") == "absent"


def test_patch_merges_fields_and_null_removes_one(memory: MemoryClient) -> None:
    written = memory.set("profile", {"name": "Ada", "tags": ["x"], "tmp": 1, "nested": {"a": 1, "b": 2}})
    patched = memory.patch("profile", {"tmp": None, "tags": ["y"], "nested": {"b": None, "c": 3}},
                           if_version=written.version)
    assert patched.status == "accepted"
    assert memory.get("profile") == {"name": "Ada", "tags": ["y"], "nested": {"a": 1, "c": 3}}
    with pytest.raises(Conflict):
        memory.patch("profile", {"name": "Bob"}, if_version=written.version)
    memory.patch("profile", {"name": "Grace"}, wait=False)
    assert memory.get("profile")["name"] == "Grace"


def test_a_batch_applies_puts_deletes_and_patches(memory: MemoryClient) -> None:
    memory.set("b/old", 1)
    memory.set("b/doc", {"a": 1, "b": 2})
    result = memory.batch([Put("b/new", {"x": 1}), Delete("b/old"), Patch("b/doc", {"b": None}),
                           {"op": "put", "key": "b/raw", "value": [1, 2]}])
    assert result.ok
    assert [(r.key, r.status) for r in result.results] == [
        ("b/new", "accepted"), ("b/old", "accepted"), ("b/doc", "accepted"), ("b/raw", "accepted")]
    assert memory.get("b/new") == {"x": 1}
    assert memory.get("b/old", None) is None
    assert memory.get("b/doc") == {"a": 1}
    assert memory.get("b/raw") == [1, 2]


def test_an_eventual_batch_is_read_at_once_on_every_partition(memory: MemoryClient) -> None:
    keys = [f"facts/{index}" for index in range(12)]
    result = memory.batch([Put(key, index) for index, key in enumerate(keys)], wait=False)
    assert {r.status for r in result.results} == {"pending"}
    assert len(result.positions.split(",")) > 1  # twelve keys spread over several partitions
    assert [memory.get(key) for key in keys] == list(range(12))


def test_a_batch_reports_each_lost_condition(memory: MemoryClient) -> None:
    current = memory.set("bc/a", 1)
    assert current.version is not None
    result = memory.batch([Put("bc/a", 2, if_version=current.version + 1_000_000), Put("bc/b", 3)])
    assert not result.ok
    [rejected] = result.rejected
    assert rejected.key == "bc/a" and "required version" in (rejected.reason or "")
    assert memory.get("bc/a") == 1


def test_keys_lists_every_live_key_under_a_prefix_across_pages(memory: MemoryClient) -> None:
    wanted = sorted(f"notes/{index:02d}" for index in range(7))
    for key in [*wanted, "notes/dropped", "other/1"]:
        memory.set(key, key)
    memory.delete("notes/dropped")
    listed = list(memory.keys("notes/", limit=3))
    assert [info.key for info in listed] == wanted
    assert all(info.version > 0 for info in listed)
    assert {info.key for info in memory.keys()} == {*wanted, "other/1"}


async def test_async_keys_walk_every_page(amemory: AsyncMemoryClient) -> None:
    for index in range(5):
        await amemory.set(f"a/{index}", index, wait=False)
    assert [info.key async for info in amemory.keys("a/", limit=2)] == [f"a/{index}" for index in range(5)]


def test_appending_to_a_stream_answers_its_position(memory: MemoryClient) -> None:
    first = memory.append("agent-7/steps", {"tool": "search", "query": "red apples"})
    second = memory.append("agent-7/steps", {"tool": "summarise"}, wait=False)
    assert (first.key, first.status) == ("agent-7/steps", "accepted")
    assert second.pending
    assert second.partition == first.partition and second.offset > first.offset  # one stream, one partition
    assert second.position in (memory.session_token or "").split(",")


# ----------------------------------------------------------------------------------------- search by text

def test_search_text_finds_a_fact_by_a_paraphrase_and_by_its_words(memory: MemoryClient) -> None:
    memory.set("facts/cat", {"text": "Our cat Luna sleeps on the windowsill all afternoon.", "kind": "pet"})
    memory.set("facts/car", {"text": "The car needs new tyres before winter.", "kind": "chore"})
    # The session's token makes each search wait for the writes: read-your-writes with no sleep.
    assert memory.search_text("Where does the kitty nap?", 2)[0]["key"] == "facts/cat"
    assert [hit["key"] for hit in memory.search_text("tyres", mode="keyword")] == ["facts/car"]
    assert [hit["key"] for hit in memory.search_text("cat", mode="hybrid", filter={"kind": "chore"})] == ["facts/car"]


async def test_async_search_text_takes_the_same_modes_and_filters(amemory: AsyncMemoryClient) -> None:
    await amemory.set("facts/cat", {"text": "Our cat Luna sleeps on the windowsill all afternoon.", "kind": "pet"})
    await amemory.set("other/cat", {"text": "Our cat Luna sleeps on the windowsill all afternoon.", "kind": "pet"})
    found = await amemory.search_text("Where does the kitty nap?", 5, mode="semantic",
                                      filter={"$key_prefix": "facts/"})
    assert [hit["key"] for hit in found] == ["facts/cat"]
    with pytest.raises(InvalidRequest, match="mode"):
        await amemory.search_text("cat", mode="fuzzy")
