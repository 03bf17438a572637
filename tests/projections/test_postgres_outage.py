"""PostgreSQL stopped and restarted under writes: writes and hot reads go on, and nothing is lost."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from ams.settings import Settings
from compose.local import LocalStack
from tests.support import fold_history, kv_events_by_key

pytestmark = pytest.mark.stack

KEYS = 8


async def write(api: httpx.AsyncClient, start: int, count: int, positions: list[str]) -> None:
    for index in range(start, start + count):
        response = await api.put(f"/v1/kv/durable/{index % KEYS}", json={"i": index})
        assert response.status_code == 200, response.text  # strong writes need only the log and Redis
        positions.append(response.json()["position"])


async def test_postgres_stopped_and_restarted_under_writes_loses_nothing(
    stack: LocalStack, settings: Settings, api: httpx.AsyncClient, tenant: str
) -> None:
    postgres = stack.component("postgres")
    positions: list[str] = []
    await write(api, 0, 20, positions)
    writer = asyncio.create_task(write(api, 20, 40, positions))
    await asyncio.sleep(0.2)
    await asyncio.to_thread(stack.down, ["postgres"])
    try:
        await writer
        await write(api, 60, 20, positions)
        assert (await api.get(f"/v1/kv/durable/{79 % KEYS}")).json() == {"i": 79}  # hot reads keep working
        unavailable = await api.get("/v1/kv/durable/0/history")
        assert unavailable.status_code == 503, unavailable.text
        assert unavailable.json()["error"]["code"] == "postgres_unavailable"
    finally:
        await asyncio.to_thread(stack.ensure, postgres)
    await write(api, 80, 20, positions)

    newest: dict[int, int] = {}
    for position in positions:
        partition, offset = map(int, position.split(":"))
        newest[partition] = max(offset, newest.get(partition, -1))
    token = ",".join(f"{partition}:{offset}" for partition, offset in sorted(newest.items()))
    async with asyncio.timeout(60):  # the projector retries with a backoff of up to 5 s
        while (await api.get("/v1/kv/durable/0/history", headers={"X-AMS-Min-Position": token})).status_code != 200:
            await asyncio.sleep(0.5)

    for key, events in (await kv_events_by_key(settings, tenant)).items():
        history = (await api.get(f"/v1/kv/{key}/history", params={"order": "oldest", "limit": 1000})).json()
        expected = [(logged.position, outcome.status.value, outcome.version)
                    for logged, outcome in fold_history(events)]
        got = [(entry["position"], entry["outcome"]["status"], entry["outcome"]["version"])
               for entry in history["entries"]]
        assert got == expected, key  # every event exactly once, in order, with the fold's outcome
    assert sum(len(events) for events in (await kv_events_by_key(settings, tenant)).values()) == 100
