"""The hot projection's applied positions as the command side reads them, against a real Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from ams.settings import Settings
from commands.envelope import PUT, Event, now_ms
from commands.keys import Position, kafka_key, partition_for
from projections.redis_kv import RedisSink
from projections.redis_layout import RedisLayout
from projections.sink import Positioned
from queries.hot_cache import Current
from queries.positions import AppliedChannels, AppliedPositions

pytestmark = pytest.mark.stack


@pytest.fixture
async def positions(settings: Settings) -> AsyncIterator[AppliedPositions]:
    client = aioredis.from_url(settings.redis_url)
    layout = RedisLayout(f"test-{uuid.uuid4().hex[:8]}")
    yield AppliedPositions(client, layout, 2, AppliedChannels(client))
    async for name in client.scan_iter(match=f"{layout.prefix}:*"):
        await client.unlink(name)
    await client.aclose()


async def test_outcomes_are_read_only_while_the_partition_still_holds_what_it_applied(
    positions: AppliedPositions,
) -> None:
    client, layout = positions.client, positions.layout
    wanted = [Position(1, 7), Position(1, 8)]
    await client.set(layout.checkpoint(1), 8)
    await client.set(layout.live(1), 1)
    await client.set(layout.outcome(1, 8), b'{"status": "duplicate", "reason": "again", "version": 3}')
    assert await positions.outcomes(wanted) == [None, {"status": "duplicate", "reason": "again", "version": 3}]
    # Redis lost its data after applying them (a flush, a restart): the outcomes are not known, not "accepted".
    await client.delete(layout.live(1))
    assert await positions.outcomes(wanted) is None
    await client.set(layout.live(1), 1)
    await client.set(layout.checkpoint(1), 7)  # restored to an older checkpoint: 8 is not applied again yet
    assert await positions.outcomes(wanted) is None
    assert positions.applied[1] == 7  # and the tracker knows, so a writer waits for it again


@pytest.fixture
async def cached(settings: Settings) -> AsyncIterator[tuple[AppliedPositions, RedisSink]]:
    """Positions with a hot-key cache, started, and a projector writing the same namespace."""
    name = f"hot-cache-test-{uuid.uuid4().hex[:8]}"
    client = aioredis.from_url(settings.redis_url, client_name=name)
    layout = RedisLayout(f"test-{uuid.uuid4().hex[:8]}")
    sink = RedisSink(settings.redis_url, layout, settings.partitions)
    for partition in range(settings.partitions):
        await client.set(layout.live(partition), 1)
    positions = AppliedPositions(client, layout, settings.partitions, AppliedChannels(client), hot_keys=100)
    await positions.start()
    try:
        await until(lambda: positions.cache is not None and positions.cache.settled)
        yield positions, sink
    finally:
        await positions.stop()
        await positions.channels.stop()
        await sink.drop()
        await sink.close()
        await client.aclose()


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not within the time allowed"
        await asyncio.sleep(0.02)


def keep(positions: AppliedPositions, tenant: str, key: str) -> bytes:
    """Put a value of ``key`` in the cache as a read of Redis would, and return its name."""
    assert positions.cache is not None
    name = kafka_key(tenant, key)
    positions.cache.put(positions.cache.ticket(), name, Current(b"1", 1, 0), 0)
    assert len(positions.cache) == 1
    return name


async def test_the_cache_follows_the_projectors_announcements(
    cached: tuple[AppliedPositions, RedisSink], tenant: str
) -> None:
    positions, sink = cached
    cache = positions.cache
    assert cache is not None
    home = partition_for(kafka_key(tenant, "k"), positions.partitions)
    keep(positions, tenant, "k")
    await sink.apply(home, [Positioned(Event(PUT, tenant, "other", 1, ts=now_ms()), 0, True)], 0, -1)
    await until(lambda: cache.seen[home] == 0)
    assert len(cache) == 1  # another key's batch: kept
    await sink.apply(home, [Positioned(Event(PUT, tenant, "k", 2, ts=now_ms()), 1, True)], 1, 0)
    await until(lambda: cache.seen[home] == 1)
    assert len(cache) == 0


async def test_the_cache_is_dropped_when_the_checkpoint_moves_unannounced_or_the_generation_changes(
    cached: tuple[AppliedPositions, RedisSink], tenant: str
) -> None:
    positions, _ = cached
    cache = positions.cache
    assert cache is not None
    layout = positions.layout
    keep(positions, tenant, "k")
    await positions.client.set(layout.checkpoint(0), 5)  # as a restore from PostgreSQL does: no announcement
    await until(lambda: len(cache) == 0)
    assert cache.seen[0] == 5
    keep(positions, tenant, "k")
    await positions.client.set(layout.pointer(1), 1)  # a rebuild switched partition 1 to generation 1
    await positions.client.set(layout.at(1).live(1), 1)
    await positions.client.set(layout.at(1).checkpoint(1), 7)
    await positions.refresh()
    assert len(cache) == 0 and not cache.settled
    await until(lambda: cache.settled)
    assert cache.seen[1] == 7


async def test_the_cache_is_dropped_when_the_subscription_is_lost(
    cached: tuple[AppliedPositions, RedisSink], tenant: str
) -> None:
    positions, _ = cached
    cache = positions.cache
    assert cache is not None
    keep(positions, tenant, "k")
    epoch = cache.epoch
    name = await positions.client.client_getname()
    for client in await positions.client.client_list(_type="pubsub"):
        if client["name"] == name:
            await positions.client.client_kill_filter(_id=client["id"])
    await until(lambda: cache.epoch > epoch and cache.settled)  # dropped, then synced on the new subscription
    assert len(cache) == 0
    keep(positions, tenant, "k")  # and in use again
