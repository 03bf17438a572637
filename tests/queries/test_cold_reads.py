"""Current-value reads fall back to PostgreSQL when Redis misses or is down, and Redis is re-warmed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from ams.settings import Settings
from commands.keys import kafka_key, partition_for
from compose.local import LocalStack
from projections.redis_layout import RedisLayout
from tests.conftest import token_for
from tests.support import cold_reads, fold_log_for

pytestmark = pytest.mark.stack


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(settings.redis_url)
    yield client
    await client.aclose()


async def write_keys(api: httpx.AsyncClient, count: int = 12) -> str:
    """Writes, overwrites and conditional writes over ``count`` keys; returns a token covering them all."""
    newest: dict[int, int] = {}
    for index in range(3 * count):
        response = await api.put(f"/v1/kv/cold/{index % count}", json={"round": index // count, "i": index})
        partition, offset = map(int, response.json()["position"].split(":"))
        newest[partition] = max(offset, newest.get(partition, -1))
    return ",".join(f"{partition}:{offset}" for partition, offset in sorted(newest.items()))


async def wait_for_postgres(api: httpx.AsyncClient, token: str) -> None:
    response = await api.get("/v1/kv/cold/0/history", headers={"X-AMS-Min-Position": token})
    assert response.status_code == 200, response.text


async def assert_reads_match_the_log(settings: Settings, api: httpx.AsyncClient, tenant: str) -> None:
    for key, record in (await fold_log_for(settings, tenant)).items():
        assert record is not None
        response = await api.get(f"/v1/kv/{key}")
        assert response.status_code == 200, (key, response.text)
        assert response.json() == record.value, key
        assert response.headers["ETag"] == f'"{record.version}"', key


async def test_a_key_missing_from_redis_is_read_from_postgres_and_rewarmed(
    settings: Settings, api: httpx.AsyncClient, tenant: str, redis: aioredis.Redis
) -> None:
    written = await api.put("/v1/kv/evicted", json={"kept": "in postgres"})
    await api.get("/v1/kv/evicted/history", headers={"X-AMS-Min-Position": written.json()["position"]})
    layout = RedisLayout(settings.redis_prefix)
    home = partition_for(kafka_key(tenant, "evicted"), settings.partitions)
    generation = int(await redis.get(layout.pointer(home)) or 0)  # a rebuild may have moved the partition
    name = layout.at(generation).record(home, tenant, "evicted")
    assert await redis.delete(name) == 1

    before = await cold_reads(settings, "redis_miss")
    response = await api.get("/v1/kv/evicted")
    assert response.status_code == 200, response.text
    assert await cold_reads(settings, "redis_miss") == before + 1
    assert response.json() == {"kept": "in postgres"}
    assert response.headers["ETag"] == f'"{written.json()["version"]}"'
    assert await redis.hget(name, "version") == str(written.json()["version"]).encode()  # re-warmed


async def test_an_absent_key_is_still_a_404(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/kv/cold/never")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_reads_are_served_from_postgres_while_redis_is_down(
    stack: LocalStack, settings: Settings, api: httpx.AsyncClient, tenant: str
) -> None:
    await wait_for_postgres(api, await write_keys(api))
    redis_server = stack.component("redis")
    before = await cold_reads(settings, "redis_unavailable")
    await asyncio.to_thread(stack.down, ["redis"])
    try:
        await assert_reads_match_the_log(settings, api, tenant)
        assert await cold_reads(settings, "redis_unavailable") >= before + 12
        assert (await api.get("/v1/kv/cold/never")).status_code == 404
        other = {"Authorization": f"Bearer {token_for(settings, 'cold-neighbour')}"}
        assert (await api.get("/v1/kv/cold/0", headers=other)).status_code == 404  # tenant-scoped
    finally:
        await asyncio.to_thread(stack.ensure, redis_server)
    async with asyncio.timeout(30):
        while (await api.put("/v1/kv/cold/after", json="redis is back")).status_code != 200:
            await asyncio.sleep(0.2)
    assert (await api.get("/v1/kv/cold/after")).json() == "redis is back"


async def test_a_token_redis_has_not_reached_is_served_by_postgres_or_times_out_clearly(
    stack: LocalStack, api: httpx.AsyncClient
) -> None:
    projector = stack.component("projector-redis")
    await asyncio.to_thread(stack.down, ["projector-redis"])
    try:
        written = await api.put("/v1/kv/cold/pending", json="only in postgres yet",
                                headers={"Prefer": "respond-async"})
        assert written.status_code == 202, written.text
        token = written.json()["position"]
        response = await api.get("/v1/kv/cold/pending", headers={"X-AMS-Min-Position": token})
        assert response.status_code == 200, response.text
        assert response.json() == "only in postgres yet"
        partition, offset = token.split(":")
        never_written = f"{partition}:{int(offset) + 10**6}"
        beyond = await api.get("/v1/kv/cold/pending", headers={"X-AMS-Min-Position": never_written})
        assert beyond.status_code == 400  # no wait can reach a position past the end of the log
        assert beyond.json()["error"]["code"] == "position_beyond_log"
    finally:
        await asyncio.to_thread(stack.ensure, projector)
