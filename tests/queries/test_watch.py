"""Watch (SSE) delivers every change under a prefix, in order, and resumes after a disconnect without gaps."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from ams.settings import Settings
from tests.conftest import token_for
from tests.support import fold_history, gateway_process_client, in_log_order, kv_events_by_key

pytestmark = pytest.mark.stack


async def changes(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
    """The SSE events of a response's lines: {"id": ..., "event": ..., "data": parsed JSON}."""
    event: dict[str, Any] = {}
    async for line in lines:
        if not line:
            if "data" in event:
                yield {**event, "data": orjson.loads(event["data"])}
            event = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            event[name] = value.removeprefix(" ")


async def opened(response: httpx.Response) -> AsyncIterator[str]:
    """The response's lines, after the comment that says the watch has taken its starting point."""
    assert response.status_code == 200, await response.aread()
    assert response.headers["content-type"].startswith("text/event-stream")
    lines = response.aiter_lines()
    assert await anext(lines) == ": watching"
    return lines


async def test_watch_delivers_every_change_in_order_and_resumes_without_gaps(
    settings: Settings, api: httpx.AsyncClient, tenant: str
) -> None:
    neighbour = {"Authorization": f"Bearer {token_for(settings, 'watch-neighbour')}"}

    async def write(start: int, count: int) -> None:
        for index in range(start, start + count):
            await api.put(f"/v1/kv/w/{index % 5}", json={"n": index})
            if index % 7 == 0:
                await api.put("/v1/kv/outside/prefix", json=index)
                await api.put(f"/v1/kv/w/{index % 5}", json="lost", headers={"If-Match": '"0"'})  # rejected
                await api.put(f"/v1/kv/w/{index % 5}", json="theirs", headers=neighbour)

    received: list[dict[str, Any]] = []
    async with asyncio.timeout(60):
        async with api.stream("GET", "/v1/watch", params={"prefix": "w/"}) as response:
            lines = await opened(response)
            writer = asyncio.create_task(write(0, 30))
            async for change in changes(lines):
                received.append(change)
                if len(received) == 12:
                    break  # disconnect mid-stream, while the writer goes on
        await writer
        await write(30, 20)  # written while nobody watches
        expected = [
            (logged, outcome) for key, events in (await kv_events_by_key(settings, tenant)).items()
            if key.startswith("w/") for logged, outcome in fold_history(events) if outcome.accepted
        ]
        resume = {"Last-Event-ID": received[-1]["id"]}
        async with api.stream("GET", "/v1/watch", params={"prefix": "w/"}, headers=resume) as response:
            async for change in changes(await opened(response)):
                received.append(change)
                if len(received) == len(expected):
                    break

    positions = [change["data"]["position"] for change in received]
    assert len(set(positions)) == len(positions) == len(expected) == 50  # every change once, nothing else
    by_position = {logged.position: (logged, outcome) for logged, outcome in expected}
    for change in received:
        logged, outcome = by_position[change["data"]["position"]]
        assert outcome.record is not None
        assert change["event"] == "change"
        assert (change["data"]["key"], change["data"]["value"], change["data"]["version"]) == (
            logged.event.key, outcome.record.value, outcome.record.version)
    assert in_log_order(positions)


async def test_watches_per_tenant_are_bounded(settings: Settings, tenant: str) -> None:
    """The bound is per gateway process (each keeps its own count), so every watch goes to one process."""
    async with contextlib.AsyncExitStack() as stack:
        api = await stack.enter_async_context(gateway_process_client(settings, 1, tenant))
        # Keep each stream's line iterator: a collected iterator closes its connection, ending that watch.
        watching = [await opened(await stack.enter_async_context(api.stream("GET", "/v1/watch")))
                    for _ in range(settings.max_watchers_per_tenant)]
        async with api.stream("GET", "/v1/watch") as refused:
            assert refused.status_code == 429
            assert orjson.loads(await refused.aread())["error"]["code"] == "too_many_watchers"
        assert len(watching) == settings.max_watchers_per_tenant
        other = {"Authorization": f"Bearer {token_for(settings, 'unbounded-neighbour')}"}
        async with api.stream("GET", "/v1/watch", headers=other) as response:
            await opened(response)  # another tenant is not affected
    async with gateway_process_client(settings, 1, tenant) as api, asyncio.timeout(10):
        while True:  # closed watches give their slots back
            async with api.stream("GET", "/v1/watch") as response:
                if response.status_code == 200:
                    break
            await asyncio.sleep(0.1)


@pytest.mark.parametrize("params, headers, code", [
    ({"prefix": "bad prefix"}, {}, "invalid_name"),
    ({}, {"Last-Event-ID": "yesterday"}, "invalid_position"),
    ({}, {"Last-Event-ID": "99:1"}, "invalid_position"),
])
async def test_bad_watch_requests_are_clear_400s(
    api: httpx.AsyncClient, params: dict[str, str], headers: dict[str, str], code: str
) -> None:
    response = await api.get("/v1/watch", params=params, headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == code
