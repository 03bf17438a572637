"""Rebuilding the hot projection from offset 0 beside the live one, with no downtime."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import redis.asyncio as aioredis

from ams.settings import Settings
from projections.feed import Window
from projections.redis_kv import RedisSink
from projections.redis_layout import RedisLayout
from replay.rebuild_redis import rebuild_redis
from replay.rebuild_state import read_state
from tests.replay.digests import end_offsets, kill_rebuild_midway
from tests.support import fold_log_for, redis_records

pytestmark = pytest.mark.stack


async def history_of_writes(api: httpx.AsyncClient) -> None:
    """Puts, patches, deletes, a lost conditional write, a retried command and TTLs."""
    for i in range(30):
        await api.put(f"/v1/kv/k{i % 7}", json={"i": i}, headers={"Idempotency-Key": f"c{i}"})
    await api.put("/v1/kv/k0", json="retry", headers={"Idempotency-Key": "c0"})  # a duplicate
    await api.patch("/v1/kv/k1", content=b'{"extra": true}', headers={"Content-Type": "application/merge-patch+json"})
    await api.delete("/v1/kv/k2")
    await api.put("/v1/kv/k3", json="stale", headers={"If-Match": "0"})  # rejected
    await api.put("/v1/kv/short", json=1, params={"ttl": "1"})
    await api.put("/v1/kv/long", json=1, params={"ttl": "3600"})


async def pointers(settings: Settings) -> list[int]:
    client = aioredis.from_url(settings.redis_url)
    layout = RedisLayout(settings.redis_prefix)
    try:
        return [int(g or 0) for g in await client.mget([layout.pointer(p) for p in range(settings.partitions)])]
    finally:
        await client.aclose()


async def test_a_rebuild_equals_the_live_projection_and_reads_stay_correct_meanwhile(
    api: httpx.AsyncClient, settings: Settings, tenant: str
) -> None:
    await history_of_writes(api)
    before = await pointers(settings)
    stop = asyncio.Event()

    async def read_and_write_during_the_rebuild() -> int:
        step = 0
        while not stop.is_set():
            step += 1
            assert (await api.put("/v1/kv/during", json=step)).status_code == 200
            assert (await api.get("/v1/kv/during")).json() == step  # read-your-writes holds throughout
            assert (await api.get("/v1/kv/k2")).status_code == 404
        return step

    traffic = asyncio.create_task(read_and_write_during_the_rebuild())
    state = await rebuild_redis(settings, quiet=True)
    stop.set()
    steps = await traffic
    assert steps > 0 and state.state == "done"
    assert await pointers(settings) == [max(before) + 1] * settings.partitions

    expected = {key: record for key, record in (await fold_log_for(settings, tenant)).items() if record is not None}
    assert await redis_records(settings, tenant) == expected


async def test_a_rebuild_killed_midway_leaves_live_reads_correct_and_can_be_resumed(
    api: httpx.AsyncClient, settings: Settings, tenant: str
) -> None:
    await history_of_writes(api)
    await kill_rebuild_midway(settings, "redis")
    assert (await api.get("/v1/kv/k1")).json() == {"i": 29, "extra": True}
    expected = {key: record for key, record in (await fold_log_for(settings, tenant)).items() if record is not None}
    assert await redis_records(settings, tenant) == expected  # live state untouched (or already switched, whole)

    state = await rebuild_redis(settings, quiet=True)  # resumes the unfinished generation
    assert state.state == "done"
    assert await redis_records(settings, tenant) == expected
    client = aioredis.from_url(settings.redis_url)
    try:
        assert (await read_state(client, RedisLayout(settings.redis_prefix), "redis"))["state"] == "done"  # type: ignore[index]
    finally:
        await client.aclose()


async def test_the_admin_endpoint_runs_a_rebuild_for_operators_only(api: httpx.AsyncClient, settings: Settings,
                                                                    tenant: str) -> None:
    from tests.conftest import token_for

    await api.put("/v1/kv/anything", json=1)
    tenant_admin = {"Authorization": f"Bearer {token_for(settings, tenant, 'memory:admin')}"}
    assert (await api.post("/v1/admin/rebuilds/redis", headers=tenant_admin)).status_code == 403
    operator = {"Authorization": f"Bearer {token_for(settings, 'ops', 'memory:operator')}"}
    assert (await api.post("/v1/admin/rebuilds/nothing", headers=operator)).status_code == 404
    started = await api.post("/v1/admin/rebuilds/redis", headers=operator)
    assert started.status_code == 202, started.text
    async with asyncio.timeout(300):
        while True:
            status = await api.get("/v1/admin/rebuilds/redis", headers=operator)
            if status.status_code == 200 and status.json()["state"] in ("done", "failed"):
                break
            await asyncio.sleep(0.5)
    body = status.json()
    assert body["state"] == "done", body
    assert body["applied"] > 0 and body["events_per_second"] > 0
    assert (await api.get("/v1/kv/anything")).json() == 1


async def test_a_rebuild_rebuilds_the_command_indexes_and_stream_records(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    for n in range(40):
        assert (await api.put("/v1/kv/hot", json=n, headers={"Idempotency-Key": f"hot-{n}"})).status_code == 200
    assert (await api.post("/v1/streams/run", json=1, headers={"Idempotency-Key": "step-1"})).status_code == 200
    assert (await rebuild_redis(settings, quiet=True)).state == "done"
    retried = await api.put("/v1/kv/hot", json=0, headers={"Idempotency-Key": "hot-0"})
    assert retried.json()["status"] == "duplicate", retried.text
    again = await api.post("/v1/streams/run", json=1, headers={"Idempotency-Key": "step-1"})
    assert again.json()["status"] == "duplicate", again.text


@pytest.mark.parametrize("window", [Window(records=3), Window(value_bytes=200)], ids=["by records", "by bytes"])
async def test_a_rebuild_in_many_small_windows_equals_the_live_projection(
    api: httpx.AsyncClient, settings: Settings, tenant: str, window: Window
) -> None:
    """Each window is folded and its keys carried to the next: a key written in many windows ends the same."""
    await history_of_writes(api)
    assert (await rebuild_redis(settings, quiet=True, window=window)).state == "done"
    expected = {key: record for key, record in (await fold_log_for(settings, tenant)).items() if record is not None}
    assert await redis_records(settings, tenant) == expected


async def test_a_log_ending_in_commit_markers_is_rebuilt_over_them(
    api: httpx.AsyncClient, settings: Settings, tenant: str
) -> None:
    """A batch is a transaction, so partitions end with its commit marker, which the live worker moves its
    checkpoint over once idle: the new generation must reach that checkpoint too, or it never switches."""
    batch = {"operations": [{"op": "put", "key": f"b{n}", "value": n} for n in range(24)]}
    assert (await api.post("/v1/batch", json=batch)).status_code == 200
    live = RedisSink(settings.redis_url, RedisLayout(settings.redis_prefix), settings.partitions)
    try:
        async with asyncio.timeout(30):  # the live worker settles idle partitions over their markers
            while (await live.checkpoints()) != {p: head - 1 for p, head in
                                                 (await end_offsets(settings, settings.events_topic)).items() if head}:
                await asyncio.sleep(0.2)
    finally:
        await live.close()
    async with asyncio.timeout(120):
        assert (await rebuild_redis(settings, quiet=True)).state == "done"
    expected = {key: record for key, record in (await fold_log_for(settings, tenant)).items() if record is not None}
    assert await redis_records(settings, tenant) == expected
