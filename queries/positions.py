"""How far the hot projection has applied the log, per partition, and waiting until it has applied more.

The projector publishes ``"<generation>:<partition>:<offset>"`` on a Redis channel after every batch; a
poll of the generation pointers and checkpoints every ``POLL_SECONDS`` covers missed messages, Redis
restarts and rebuilds. Readers use the generation seen here: after a rebuild moves a partition's pointer,
the retired generation stays frozen and readable (never newer than the new one) until it is dropped well
after every gateway has moved on, and waits are always measured in the generation being read.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import redis.asyncio as aioredis

from commands.keys import Position
from projections.redis_layout import RedisLayout
from queries.tracking import POLL_SECONDS, PositionTracker, cancel_all

log = logging.getLogger("ams.gateway")


class AppliedPositions(PositionTracker):
    def __init__(self, client: aioredis.Redis, layout: RedisLayout, partitions: int) -> None:
        super().__init__()
        self.client, self.layout, self.partitions = client, layout, partitions
        self.generations: dict[int, int] = {partition: 0 for partition in range(partitions)}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.refresh()
        self._tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._poll())]

    async def stop(self) -> None:
        await cancel_all(self._tasks)

    def layout_of(self, partition: int) -> RedisLayout:
        """The layout of the generation readers of ``partition`` use now."""
        return self.layout.at(self.generations[partition])

    async def refresh(self) -> dict[int, int]:
        """Read every pointer and checkpoint from Redis; Redis is authoritative (after a flush it may go down)."""
        partitions = range(self.partitions)
        pointers = await self.client.mget([self.layout.pointer(partition) for partition in partitions])
        generations = {partition: int(value or 0) for partition, value in enumerate(pointers)}
        checkpoints = await self.client.mget([self.layout.at(generations[p]).checkpoint(p) for p in partitions])
        self.generations = generations
        self._set({partition: int(value) if value is not None else -1 for partition, value in enumerate(checkpoints)})
        return dict(self.applied)

    async def outcomes(self, positions: list[Position]) -> list[dict[str, Any] | None]:
        keys = [self.layout_of(position.partition).outcome(position.partition, position.offset)
                for position in positions]
        return [orjson.loads(raw) if raw is not None else None for raw in await self.client.mget(keys)]

    async def _listen(self) -> None:
        while True:
            try:
                pubsub = self.client.pubsub()
                await pubsub.subscribe(self.layout.applied_channel)
                async for message in pubsub.listen():
                    if message["type"] != "message":
                        continue
                    generation, partition, offset = map(int, message["data"].decode().split(":"))
                    if generation == self.generations.get(partition) and offset > self.applied.get(partition, -1):
                        self._set({partition: offset})
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - keep listening through Redis restarts
                log.warning("lost the projection's applied-position channel (%r); reconnecting", error)
                await asyncio.sleep(0.5)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                await self.refresh()
            except Exception as error:  # noqa: BLE001 - keep polling through Redis restarts
                log.warning("could not read the projection's checkpoints (%r)", error)
