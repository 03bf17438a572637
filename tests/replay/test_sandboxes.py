"""Sandboxes through the real stack: the log forked at a position, its own projections, isolation, drop."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from ams.namespaces import ALL_TENANTS, sandbox
from ams.settings import Settings
from commands.envelope import PUT, Event, encode, now_ms
from commands.keys import kafka_key, partition_for
from replay.sandboxes import create_sandbox, drop_sandbox, follow_registry
from tests.conftest import token_for
from tests.support import produce_raw, read_topic, redis_records, topic_exists

pytestmark = pytest.mark.stack


@pytest.fixture
async def admin(settings: Settings, tenant: str) -> AsyncIterator[httpx.AsyncClient]:
    """The tenant's admin; the sandboxes it leaves are dropped (each one holds connections and state)."""
    headers = {"Authorization": f"Bearer {token_for(settings, tenant, 'memory:admin')}"}
    async with httpx.AsyncClient(base_url=settings.gateway_url, headers=headers, timeout=60) as client:
        yield client
        for sandbox in (await client.get("/v1/sandboxes")).json()["items"]:
            if sandbox["owner"] == tenant:
                await client.delete(f"/v1/sandboxes/{sandbox['name']}")


async def make_sandbox(admin: httpx.AsyncClient, **body: str) -> tuple[str, dict[str, str]]:
    name = f"sb-{uuid.uuid4().hex[:8]}"
    response = await admin.post("/v1/sandboxes", json={"name": name, **body})
    assert response.status_code == 201, response.text
    headers = {"X-AMS-Sandbox": name}
    if response.headers.get("X-AMS-Position"):
        headers["X-AMS-Min-Position"] = response.headers["X-AMS-Position"]
    return name, headers


async def test_a_sandbox_until_a_position_shows_exactly_the_state_at_that_position(
    api: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    await api.put("/v1/kv/plan", json="v1")
    await api.put("/v1/kv/notes", json=["a"])
    cut = await api.put("/v1/kv/plan", json="v2")
    await api.put("/v1/kv/plan", json="v3")  # after the cut
    await api.delete("/v1/kv/notes")  # after the cut
    await api.put("/v1/kv/later", json=1)  # after the cut
    _, sandbox = await make_sandbox(admin, until=cut.headers["X-AMS-Position"])

    assert (await api.get("/v1/kv/plan", headers=sandbox)).json() == "v2"
    assert (await api.get("/v1/kv/notes", headers=sandbox)).json() == ["a"]
    assert (await api.get("/v1/kv/later", headers=sandbox)).status_code == 404
    listed = (await api.get("/v1/kv", headers=sandbox)).json()["items"]
    assert [item["key"] for item in listed] == ["notes", "plan"]
    assert (await api.get("/v1/kv/plan")).json() == "v3"  # live is as it was


async def test_writes_to_a_sandbox_never_touch_live_and_diffs_show_them(
    api: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    await api.put("/v1/kv/plan", json="live")
    await api.put("/v1/kv/same", json=1)
    name, sandbox = await make_sandbox(admin)
    heads = (await api.get("/v1/positions")).json()["log"]
    written = await api.put("/v1/kv/plan", json="rerun", headers=sandbox)
    assert written.status_code == 200, written.text
    assert (await api.put("/v1/kv/new", json=True, headers=sandbox)).status_code == 200
    assert (await api.get("/v1/kv/plan", headers={"X-AMS-Sandbox": name})).json() == "rerun"
    assert (await api.get("/v1/kv/plan")).json() == "live"
    assert (await api.get("/v1/positions")).json()["log"] == heads  # nothing reached the live log

    against_live = (await admin.get(f"/v1/sandboxes/{name}/diff")).json()["differences"]
    assert against_live == [{"key": "new", "sandbox": True, "other": None},
                            {"key": "plan", "sandbox": "rerun", "other": "live"}]
    await api.put("/v1/kv/same", json=2)  # live moves on after the fork
    against_source = (await admin.get(f"/v1/sandboxes/{name}/diff", params={"against": "source"})).json()
    assert [row["key"] for row in against_source["differences"]] == ["new", "plan"]


async def test_a_sandbox_dead_letters_an_oversized_value_as_live_memory_does(
    api: httpx.AsyncClient, admin: httpx.AsyncClient, settings: Settings, tenant: str
) -> None:
    """A sandbox's projections are made and fed as the live ones are: a value over the limit, produced straight
    into the sandbox's log, is dead-lettered (not applied) and the partition keeps moving."""
    name, headers = await make_sandbox(admin)
    topic = sandbox(settings, tenant, name).topic
    partition = partition_for(kafka_key(tenant, "big"), settings.partitions)
    huge = Event(PUT, tenant, "big", "x" * (settings.max_value_bytes + 1), ts=now_ms())
    oversized = await produce_raw(settings, encode(huge), partition=partition, compression="gzip", topic=topic)
    await produce_raw(settings, encode(Event(PUT, tenant, "big", "small", ts=now_ms())), partition=partition,
                      topic=topic)

    async with asyncio.timeout(20):
        while (await api.get("/v1/kv/big", headers=headers)).status_code != 200:
            await asyncio.sleep(0.1)
    assert (await api.get("/v1/kv/big", headers=headers)).json() == "small"
    letters = [orjson.loads(dict(record.headers)["ams.dead_letter"])
               for record in await read_topic(settings, settings.dlq_topic)]
    mine = [letter for letter in letters if letter["topic"] == topic]
    assert {(letter["partition"], letter["offset"]) for letter in mine} >= {oversized}
    assert all(f"over the {settings.max_value_bytes}-byte limit" in letter["reason"] for letter in mine)


async def test_a_sandbox_created_through_the_cli_is_usable_the_moment_create_returns(
    api: httpx.AsyncClient, settings: Settings, tenant: str
) -> None:
    """`ams sandbox create` registers the sandbox without any gateway: the next request naming it must find
    it (the gateway reads the registry to its end before answering 404), not a 404 a moment later."""
    for _ in range(3):
        name = f"cli-{uuid.uuid4().hex[:8]}"
        await create_sandbox(settings, tenant, name)
        try:
            response = await api.get("/v1/kv/never-written", headers={"X-AMS-Sandbox": name})
            assert response.json()["error"]["code"] == "not_found", response.text
        finally:
            await drop_sandbox(settings, tenant, name)


async def test_drop_removes_every_trace(api: httpx.AsyncClient, admin: httpx.AsyncClient, settings: Settings,
                                        tenant: str) -> None:
    await api.put("/v1/kv/k", json=1)
    name, in_sandbox = await make_sandbox(admin)
    assert (await api.get("/v1/kv/k", headers=in_sandbox)).json() == 1
    assert (await admin.delete(f"/v1/sandboxes/{name}")).status_code == 200
    assert all(item["name"] != name for item in (await admin.get("/v1/sandboxes")).json()["items"])
    async with asyncio.timeout(30):
        while (await api.get("/v1/kv/k", headers={"X-AMS-Sandbox": name})).status_code != 404 or \
                await redis_records(settings, tenant, sandbox(settings, tenant, name).redis_prefix):
            await asyncio.sleep(0.2)
    assert (await api.get("/v1/kv/k", headers={"X-AMS-Sandbox": name})).json()["error"]["code"] == "no_sandbox"
    assert not await topic_exists(settings, sandbox(settings, tenant, name).topic)


async def test_tenants_cannot_reach_each_others_sandboxes(admin: httpx.AsyncClient, settings: Settings) -> None:
    name, _ = await make_sandbox(admin)
    other = f"t{uuid.uuid4().hex[:12]}"
    for scopes in (("memory:read", "memory:write"), ("memory:admin",)):
        headers = {"Authorization": f"Bearer {token_for(settings, other, *scopes)}", "X-AMS-Sandbox": name}
        async with httpx.AsyncClient(base_url=settings.gateway_url, headers=headers, timeout=30) as intruder:
            assert (await intruder.get("/v1/kv/anything")).json()["error"]["code"] == "no_sandbox"
            assert (await intruder.put("/v1/kv/anything", json=1)).json()["error"]["code"] == "no_sandbox"
            if "memory:admin" in scopes:
                assert (await intruder.get(f"/v1/sandboxes/{name}/diff")).status_code == 404
                assert (await intruder.delete(f"/v1/sandboxes/{name}")).status_code == 404
                assert (await intruder.get("/v1/sandboxes")).json()["items"] == []


async def test_managing_sandboxes_needs_the_admin_scope(api: httpx.AsyncClient) -> None:
    assert (await api.post("/v1/sandboxes", json={"name": "nope"})).status_code == 403
    assert (await api.get("/v1/sandboxes")).status_code == 403


async def test_bad_sandbox_requests_are_clear_4xx(admin: httpx.AsyncClient) -> None:
    assert (await admin.post("/v1/sandboxes", json={"name": "Bad Name"})).status_code == 400
    assert (await admin.post("/v1/sandboxes", json={"name": "ok", "until": "yesterday"})).status_code == 400
    assert (await admin.post("/v1/sandboxes", json={"name": "ok", "until": "0:999999999"})).status_code == 422
    name, _ = await make_sandbox(admin)
    assert (await admin.post("/v1/sandboxes", json={"name": name})).status_code == 409


async def test_a_sandbox_dropped_and_created_again_under_its_name_is_served_afresh(
    api: httpx.AsyncClient, admin: httpx.AsyncClient, settings: Settings, tenant: str
) -> None:
    await api.put("/v1/kv/k", json="first")
    name, sandbox = await make_sandbox(admin)
    assert (await api.put("/v1/kv/only-in-first", json=1, headers=sandbox)).status_code == 200
    assert (await admin.delete(f"/v1/sandboxes/{name}")).status_code == 200
    await api.put("/v1/kv/k", json="second")
    again = await admin.post("/v1/sandboxes", json={"name": name})
    assert again.status_code == 201, again.text
    fresh = {"X-AMS-Sandbox": name, "X-AMS-Min-Position": again.headers["X-AMS-Position"]}
    async with asyncio.timeout(30):  # the gateway has seen the drop and serves the new sandbox
        while (await api.get("/v1/kv/only-in-first", headers=fresh)).status_code != 404:
            await asyncio.sleep(0.2)
    assert (await api.get("/v1/kv/k", headers=fresh)).json() == "second"
    # Read in batches newest-per-name, the registry still reports the drop before the new sandbox.
    records = [spec async for key, spec in follow_registry(settings, once=True) if key == f"{tenant}|{name}".encode()]
    assert records[-2] is None and records[-1] is not None


async def test_sandboxes_dropped_as_their_projections_start_leave_every_worker_projecting_the_next(
    api: httpx.AsyncClient, admin: httpx.AsyncClient, settings: Settings
) -> None:
    """Found in CI: a sandbox dropped while a worker still recovered its partitions left that worker's
    projection reading the deleted topic for ever (its cancellation was lost), a storm of metadata requests,
    and the worker projected no later sandbox. An operator's sandbox copies the whole log, so its recovery
    lasts long enough to be interrupted."""
    await api.put("/v1/kv/k", json="live")
    for delay in (0.0, 0.05, 0.1, 0.2, 0.4):
        name = f"ops-{uuid.uuid4().hex[:8]}"
        await create_sandbox(settings, ALL_TENANTS, name)
        await asyncio.sleep(delay)
        await drop_sandbox(settings, ALL_TENANTS, name)

    name, _ = await make_sandbox(admin)
    written = await api.put("/v1/kv/after", json={"embedding": [1.0, 0.0]}, headers={"X-AMS-Sandbox": name})
    assert written.status_code == 200, written.text  # the Redis worker projected it
    after = {"X-AMS-Sandbox": name, "X-AMS-Min-Position": written.headers["X-AMS-Position"]}
    history = await api.get("/v1/kv/after/history", headers=after)
    assert history.status_code == 200, history.text  # the PostgreSQL worker too
    found = await api.post("/v1/vector/search", json={"embedding": [1.0, 0.0]}, headers=after)
    assert found.status_code == 200 and [hit["key"] for hit in found.json()] == ["after"], found.text  # the embedder
