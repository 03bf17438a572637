"""Tenant isolation attacks on every read path: with tenant A's token, go after tenant B's keys, prefixes,
positions, streams, vectors and sandboxes, with injection in prefixes and filters. Nothing of B's may come
back, and no answer may differ between "B has it" and "nobody has it" once the names are swapped.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from ams.settings import Settings
from commands.keys import kafka_key, partition_for
from tests.conftest import token_for

pytestmark = pytest.mark.stack

ALL = ("memory:read", "memory:write", "memory:admin")
INJECTIONS = ("%", "*", "..", "../", "|", "#", "%7C", "%2F", "%25", "s*", "secret|", "_", "\\", "'", '"', " ",
              "%00", "' OR '1'='1", "s%", ".*")


@dataclass
class Victim:
    tenant: str
    client: httpx.AsyncClient
    positions: list[str]  # where B's writes landed
    token: str  # a consistency token covering all of them


def secret_text(response: httpx.Response, victim: Victim) -> None:
    """Nothing B wrote, nor B's tenant name (unless the attacker sent it and it is echoed), is in the answer."""
    sent = str(response.request.url) + " ".join(response.request.headers.values())
    for marker in (victim.tenant, "b-secret-value", "diary-entry", "bsand"):
        if marker in sent:
            continue
        assert marker not in response.text, (marker, response.request.url, response.text[:300])


def same_answer(theirs: httpx.Response, never: httpx.Response, their_name: str, never_name: str) -> None:
    assert theirs.status_code == never.status_code, (theirs.text, never.text)
    assert theirs.text.replace(their_name, "NAME") == never.text.replace(never_name, "NAME")


@pytest.fixture
async def victim(settings: Settings) -> AsyncIterator[Victim]:
    tenant = f"t{uuid.uuid4().hex[:12]}"
    headers = {"Authorization": f"Bearer {token_for(settings, tenant, *ALL)}"}
    async with httpx.AsyncClient(base_url=settings.gateway_url, headers=headers, timeout=60) as client:
        positions = []
        for key, value in (("secret", {"pin": "b-secret-value", "embedding": [1.0, 0.0, 0.0]}),
                           ("shared", {"who": "b-secret-value"}), ("s/nested", "b-secret-value")):
            response = await client.put(f"/v1/kv/{key}", json=value)
            assert response.status_code == 200, response.text
            positions.append(response.headers["X-AMS-Position"])
        response = await client.post("/v1/streams/diary", json={"note": "diary-entry"})
        assert response.status_code == 200
        positions.append(response.headers["X-AMS-Position"])
        token = ",".join(positions)
        found = (await client.post("/v1/vector/search", json={"embedding": [1.0, 0.0, 0.0], "k": 5},
                                   headers={"X-AMS-Min-Position": positions[0]})).json()
        assert [hit["key"] for hit in found] == ["secret"]  # B itself finds it: the attack below is meaningful
        created = await client.post("/v1/sandboxes", json={"name": "bsand"})
        assert created.status_code == 201, created.text
        try:
            yield Victim(tenant, client, positions, token)
        finally:
            await client.delete("/v1/sandboxes/bsand")


@pytest.fixture
async def attacker(settings: Settings, tenant: str) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {token_for(settings, tenant, *ALL)}"}
    async with httpx.AsyncClient(base_url=settings.gateway_url, headers=headers, timeout=60) as client:
        assert (await client.put("/v1/kv/mine", json={"mine": True})).status_code == 200
        yield client


def full_token(positions: list[str]) -> str:
    highest: dict[int, int] = {}
    for token in positions:
        for position in token.split(","):
            partition, offset = map(int, position.split(":"))
            highest[partition] = max(offset, highest.get(partition, -1))
    return ",".join(f"{p}:{o}" for p, o in sorted(highest.items()))


def twin(tenant: str, key: str, partitions: int) -> str:
    """A never-written key of ``tenant`` in the same partition as ``key`` (answers may name the partition)."""
    home = partition_for(kafka_key(tenant, key), partitions)
    return next(name for name in (f"never{i}" for i in range(1000))
                if partition_for(kafka_key(tenant, name), partitions) == home)


async def test_kv_reads_and_history_reveal_nothing(attacker: httpx.AsyncClient, victim: Victim, tenant: str,
                                                   settings: Settings) -> None:
    for their in ("secret", "shared", "s/nested"):
        never = twin(tenant, their, settings.partitions)
        same_answer(await attacker.get(f"/v1/kv/{their}"), await attacker.get(f"/v1/kv/{never}"), their, never)
        same_answer(await attacker.get(f"/v1/kv/{their}/history"), await attacker.get(f"/v1/kv/{never}/history"),
                    their, never)
        as_of = full_token(victim.positions)
        same_answer(await attacker.get(f"/v1/kv/{their}", params={"as_of": as_of}),
                    await attacker.get(f"/v1/kv/{never}", params={"as_of": as_of}), their, never)
    for attempt in (f"{victim.tenant}|secret", f"../{victim.tenant}/secret", f"{victim.tenant}%7Csecret",
                    "%2e%2e/secret", f"..%2F{victim.tenant}%2Fsecret", "secret%00", "#diary"):
        response = await attacker.get(f"/v1/kv/{attempt}")
        assert response.status_code in (400, 404), response.text
        secret_text(response, victim)


async def test_listings_with_injected_prefixes_show_only_the_callers_keys(attacker: httpx.AsyncClient,
                                                                          victim: Victim) -> None:
    as_of = full_token(victim.positions)
    for prefix in ("", "s", "secret", victim.tenant, f"{victim.tenant}|", *INJECTIONS):
        for params in ({"prefix": prefix}, {"prefix": prefix, "as_of": as_of}):
            response = await attacker.get("/v1/kv", params=params)
            assert response.status_code in (200, 400), response.text
            secret_text(response, victim)
            if response.status_code == 200:
                assert {item["key"] for item in response.json()["items"]} <= {"mine"}, (params, response.text)
    response = await attacker.get("/v1/kv?prefix=&prefix=secret")  # a repeated parameter
    assert response.status_code in (200, 400)
    secret_text(response, victim)


async def test_streams_and_the_audit_feed_reveal_nothing(attacker: httpx.AsyncClient, victim: Victim) -> None:
    theirs, never = await attacker.get("/v1/streams/diary"), await attacker.get("/v1/streams/zzzzz")
    same_answer(theirs, never, "diary", "zzzzz")
    assert theirs.json()["entries"] == []
    for after in victim.positions:
        [position] = [p for p in after.split(",")][:1]
        partition, offset = position.split(":")
        earlier = f"{partition}:{max(0, int(offset) - 1)}"
        response = await attacker.get("/v1/streams/diary", params={"after": earlier})
        assert response.status_code == 200 and response.json()["entries"] == []
    for prefix in ("", "s", *INJECTIONS):
        for params in ({"key_prefix": prefix}, {"key_prefix": prefix, "after": "0:0"}, {"type": "stream.append"}):
            response = await attacker.get("/v1/events", params=params)
            assert response.status_code in (200, 400), response.text
            secret_text(response, victim)
            if response.status_code == 200:
                assert {event["key"] for event in response.json()["events"]} <= {"mine"}


async def test_watch_streams_only_the_callers_changes(attacker: httpx.AsyncClient, victim: Victim,
                                                      settings: Settings) -> None:
    seen: list[str] = []

    async def read(prefix: str) -> None:
        headers = {"Last-Event-ID": "0:0"}  # replay the tenant's history from the start
        async with attacker.stream("GET", "/v1/watch", params={"prefix": prefix}, headers=headers) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                assert victim.tenant not in line and "b-secret-value" not in line, line
                if line.startswith("data:"):
                    seen.append(line)
                    if '"mine2"' in line:
                        return

    for prefix in ("", "s", "m"):
        seen.clear()
        watcher = asyncio.create_task(read(prefix))
        await asyncio.sleep(0.3)
        await victim.client.put("/v1/kv/secret", json={"pin": "b-secret-value", "again": True})
        await victim.client.put("/v1/kv/mine2", json="b-secret-value")
        await attacker.put("/v1/kv/mine2", json="a's")
        if prefix == "s":  # nothing of A's under "s": the watch must stay silent, then we hang up
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(watcher, 2)
            assert seen == []
        else:
            await asyncio.wait_for(watcher, 15)
            assert seen and all("b-secret-value" not in line for line in seen)


async def test_vector_search_with_filter_injection_finds_nothing_of_theirs(attacker: httpx.AsyncClient,
                                                                           victim: Victim) -> None:
    filters: list[object] = [None, {"pin": "b-secret-value"}, {"tenant": victim.tenant}, {"key": "secret"},
                             {"pin": {"ne": "x"}}, {"pin": '" or 1==1 or "'}, {"pin": "x\" || tenant != \""},
                             {"pin": {"in": ["b-secret-value", "' or ''='"]}}]
    bad_filters: list[object] = [{'pin"] or 1==1 or value["x': 1}, {"tenant == '' or 1": 1}, {"a.b.c.d.e": 1},
                                 {"pin": {"regex": ".*"}}, {"pin": {"eq": {"$ne": 1}}}, "tenant != ''", ["pin"]]
    for backend in ("faiss", "milvus"):
        for condition in filters:
            body = {"embedding": [1.0, 0.0, 0.0], "k": 10, "backend": backend,
                    **({"filter": condition} if condition is not None else {})}
            response = await attacker.post("/v1/vector/search", json=body,
                                           headers={"X-AMS-Min-Position": victim.positions[0]})
            assert response.status_code == 200, response.text
            assert response.json() == [], (condition, response.text)
        for condition in bad_filters:
            body = {"embedding": [1.0, 0.0, 0.0], "backend": backend, "filter": condition}
            response = await attacker.post("/v1/vector/search", json=body)
            assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_filter", response.text
            secret_text(response, victim)
    wrong_dimension = await attacker.post("/v1/vector/search", json={"embedding": [1.0, 0.0]})
    assert wrong_dimension.status_code == 200 and wrong_dimension.json() == []  # B's dimension does not leak


async def test_another_tenants_sandbox_is_not_there(attacker: httpx.AsyncClient, victim: Victim) -> None:
    for path in ("/v1/kv/secret", "/v1/kv", "/v1/kv/secret/history", "/v1/streams/diary", "/v1/events",
                 "/v1/watch"):
        theirs = await attacker.get(path, headers={"X-AMS-Sandbox": "bsand"})
        never = await attacker.get(path, headers={"X-AMS-Sandbox": "zzzzz"})
        same_answer(theirs, never, "bsand", "zzzzz")
        assert theirs.status_code == 404
        assert (await attacker.put("/v1/kv/x", json=1, headers={"X-AMS-Sandbox": "bsand"})).status_code == 404
    for name in (f"{victim.tenant}|bsand", "bsand%7C", "*", "%"):
        response = await attacker.get("/v1/kv/secret", headers={"X-AMS-Sandbox": name})
        assert response.status_code == 404
        secret_text(response, victim)
    listing = await attacker.get("/v1/sandboxes")
    assert listing.status_code == 200 and listing.json()["items"] == []
    for method, suffix in (("DELETE", ""), ("GET", "/diff")):
        same_answer(await attacker.request(method, f"/v1/sandboxes/bsand{suffix}"),
                    await attacker.request(method, f"/v1/sandboxes/zzzzz{suffix}"), "bsand", "zzzzz")
    assert (await victim.client.get("/v1/sandboxes")).json()["items"][0]["name"] == "bsand"  # still B's


async def test_positions_name_no_tenant(attacker: httpx.AsyncClient, victim: Victim) -> None:
    response = await attacker.get("/v1/positions", headers={"X-AMS-Min-Position": victim.token})
    assert response.status_code == 200
    secret_text(response, victim)
    assert "secret" not in response.text and "diary" not in response.text
