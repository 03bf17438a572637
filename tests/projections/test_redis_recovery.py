"""When Redis loses its data, reads stay correct and the hot state is restored without anyone's help."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from ams.settings import Settings
from commands.keys import kafka_key, partition_for
from projections.redis_kv import decode_record
from projections.redis_layout import RedisLayout
from tests.support import cold_reads, fold_log_for

pytestmark = pytest.mark.stack


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(settings.redis_url)
    yield client
    await client.aclose()


async def wait_until_live(redis: aioredis.Redis, settings: Settings) -> None:
    layout = RedisLayout(settings.redis_prefix)
    async with asyncio.timeout(30):
        while None in await redis.mget([layout.live(partition) for partition in range(settings.partitions)]):
            await asyncio.sleep(0.1)


async def test_after_a_flush_reads_stay_correct_and_the_hot_state_comes_back(
    settings: Settings, api: httpx.AsyncClient, tenant: str, redis: aioredis.Redis
) -> None:
    newest: dict[int, int] = {}
    for index in range(40):
        written = await api.put(f"/v1/kv/mem/{index % 10}", json={"i": index})
        partition, offset = map(int, written.json()["position"].split(":"))
        newest[partition] = max(offset, newest.get(partition, -1))
    lost = await api.put("/v1/kv/mem/0", json="lost", headers={"If-Match": '"0"'})
    assert lost.status_code == 409
    token = ",".join(f"{partition}:{offset}" for partition, offset in sorted(newest.items()))
    assert (await api.get("/v1/kv/mem/0/history", headers={"X-AMS-Min-Position": token})).status_code == 200
    expected = await fold_log_for(settings, tenant)

    before = await cold_reads(settings, "redis_incomplete")
    await redis.flushall()
    for key, record in expected.items():  # at once: Redis is empty or restoring, PostgreSQL answers
        assert record is not None
        response = await api.get(f"/v1/kv/{key}")
        assert response.status_code == 200, (key, response.text)
        assert (response.json(), response.headers["ETag"]) == (record.value, f'"{record.version}"'), key
    assert await cold_reads(settings, "redis_incomplete") > before

    await wait_until_live(redis, settings)
    layout = RedisLayout(settings.redis_prefix)
    for key, record in expected.items():  # the hot state is the fold of the log again, commands and all
        home = partition_for(kafka_key(tenant, key), settings.partitions)
        fields = await redis.hgetall(layout.record(home, tenant, key))
        assert decode_record(fields) == record, key  # type: ignore[arg-type]
    retried = await api.put("/v1/kv/mem/0", json="lost", headers={"If-Match": '"0"'})
    assert retried.status_code == 409  # conditions are judged on the restored records


async def test_a_writer_never_reads_an_older_value_across_a_flush(
    settings: Settings, api: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    for index in range(30):
        written = await api.put(f"/v1/kv/ryw/{index % 3}", json=index)
        assert written.status_code == 200, written.text
        if index == 10:
            await redis.flushall()
        response = await api.get(f"/v1/kv/ryw/{index % 3}")
        assert response.status_code == 200, response.text
        assert response.json() == index
    await wait_until_live(redis, settings)


async def test_a_restore_brings_back_command_indexes_and_stream_records(
    settings: Settings, api: httpx.AsyncClient, redis: aioredis.Redis
) -> None:
    for n in range(40):
        written = await api.put("/v1/kv/idx/hot", json=n, headers={"Idempotency-Key": f"put-{n}"})
        assert written.status_code == 200, written.text
    appended = await api.post("/v1/streams/idx-run", json={"step": 0}, headers={"Idempotency-Key": "step-0"})
    assert appended.status_code == 200, appended.text
    retried = await api.post("/v1/streams/idx-run", json={"step": 0}, headers={"Idempotency-Key": "step-0"})
    assert retried.json()["status"] == "duplicate", retried.text
    await api.get("/v1/kv/idx/hot/history", headers={"X-AMS-Min-Position": retried.json()["position"]})
    await redis.flushall()
    await wait_until_live(redis, settings)
    # A writer still waiting on the retried append would read its outcome: restored from PostgreSQL.
    partition, offset = map(int, retried.json()["position"].split(":"))
    layout = RedisLayout(settings.redis_prefix)
    generation = int(await redis.get(layout.pointer(partition)) or 0)
    outcome = await redis.get(layout.at(generation).outcome(partition, offset))
    assert outcome is not None and b"duplicate" in outcome
    late = await api.put("/v1/kv/idx/hot", json=0, headers={"Idempotency-Key": "put-0"})
    assert late.json()["status"] == "duplicate", late.text
    again = await api.post("/v1/streams/idx-run", json={"step": 0}, headers={"Idempotency-Key": "step-0"})
    assert again.json()["status"] == "duplicate", again.text
    assert (await api.get("/v1/kv/idx/hot")).json() == 39
