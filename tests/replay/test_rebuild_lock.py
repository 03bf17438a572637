"""One rebuild of a projection at a time, whoever starts it: the lock in Redis, the admin endpoint and the CLI.

Real Redis (the stack's) and real gateways; no rebuild actually runs: the lock is held by the test.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from ams.settings import Settings
from projections.redis_layout import RedisLayout
from replay.rebuild_lock import RebuildLock, RebuildRunning
from tests.conftest import token_for

pytestmark = pytest.mark.stack


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.from_url(settings.redis_url)
    yield redis
    await redis.aclose()


async def owner(client: aioredis.Redis, key: str) -> str | None:
    found = await client.get(key)
    return found.decode() if isinstance(found, bytes) else found


@pytest.fixture
def layout(tenant: str) -> RedisLayout:
    """A namespace of the test's own: its locks never stop a real rebuild."""
    return RedisLayout(f"test-{tenant}")


async def test_a_second_rebuild_of_a_projection_is_refused_until_the_first_releases(
    client: aioredis.Redis, layout: RedisLayout
) -> None:
    first = RebuildLock(client, layout, ["redis"])
    await first.acquire()
    with pytest.raises(RebuildRunning, match=f"a redis rebuild is already running \\(process {os.getpid()}"):
        await RebuildLock(client, layout, ["redis"]).acquire()
    await RebuildLock(client, layout, ["postgres"]).acquire()  # another projection's is another lock
    await first.release()
    await RebuildLock(client, layout, ["redis"]).acquire()


async def test_all_conflicts_with_each_projection_and_takes_none_when_one_is_held(
    client: aioredis.Redis, layout: RedisLayout
) -> None:
    await RebuildLock(client, layout, ["vectors"]).acquire()
    with pytest.raises(RebuildRunning, match="a vectors rebuild"):
        await RebuildLock(client, layout, ["redis", "postgres", "vectors"]).acquire()
    await RebuildLock(client, layout, ["redis"]).acquire()  # `all` took nothing on its way out


async def test_the_lock_of_a_process_that_died_is_taken_over_at_once(
    client: aioredis.Redis, layout: RedisLayout
) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = RebuildLock(client, layout, ["redis"])
    await client.set(layout.rebuild_lock("redis"), gone.owner.replace(str(os.getpid()), str(dead.pid)), px=30_000)
    taker = RebuildLock(client, layout, ["redis"])
    await taker.acquire()
    assert await owner(client, layout.rebuild_lock("redis")) == taker.owner


async def test_a_process_adopts_the_lock_taken_for_it_and_releases_it_when_done(
    client: aioredis.Redis, layout: RedisLayout
) -> None:
    taken = RebuildLock(client, layout, ["postgres"])
    await taken.acquire()
    await client.set(layout.rebuild_lock("postgres"), f"{taken.token} elsewhere 1", px=30_000)  # the gateway's
    adopting = RebuildLock(client, layout, ["postgres"], taken.token)
    async with adopting.held(adopt=True):
        assert await owner(client, layout.rebuild_lock("postgres")) == adopting.owner
        assert 0 < await client.pttl(layout.rebuild_lock("postgres")) <= 30_000
    assert await owner(client, layout.rebuild_lock("postgres")) is None
    with pytest.raises(RebuildRunning, match="expired"):
        async with RebuildLock(client, layout, ["postgres"], "another-token").held(adopt=True):
            pass


@pytest.fixture
async def redis_rebuild_running(settings: Settings, client: aioredis.Redis) -> AsyncIterator[None]:
    """The live namespace's redis rebuild lock, held by this test's process (as a running rebuild would)."""
    lock = RebuildLock(client, RedisLayout(settings.redis_prefix), ["redis"])
    await lock.acquire()
    try:
        yield
    finally:
        await lock.release()


async def test_the_endpoint_answers_409_while_a_rebuild_of_the_projection_runs(
    api: httpx.AsyncClient, settings: Settings, redis_rebuild_running: None
) -> None:
    operator = {"Authorization": f"Bearer {token_for(settings, 'ops', 'memory:operator')}"}
    for projection in ("redis", "all"):
        refused = await api.post(f"/v1/admin/rebuilds/{projection}", headers=operator)
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["code"] == "rebuild_running"
        assert "a redis rebuild is already running" in refused.json()["error"]["message"]


async def test_the_cli_refuses_with_a_clear_error_while_a_rebuild_of_the_projection_runs(
    redis_rebuild_running: None
) -> None:
    cli = await asyncio.create_subprocess_exec(sys.executable, "-m", "ams.cli", "rebuild", "redis",
                                               stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, stderr = await cli.communicate()
    assert cli.returncode == 1
    assert "a redis rebuild is already running" in stderr.decode()
