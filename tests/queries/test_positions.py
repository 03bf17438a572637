"""The hot projection's applied positions as the command side reads them, against a real Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from ams.settings import Settings
from commands.keys import Position
from projections.redis_layout import RedisLayout
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
