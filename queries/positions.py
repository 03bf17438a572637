"""How far the hot projection has applied the log, per partition, and waiting until it has applied more.

The projector publishes ``"<partition>:<offset>"`` on a Redis channel after every batch; a poll of the
checkpoints every ``POLL_SECONDS`` covers missed messages and Redis restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
import redis.asyncio as aioredis

from commands.keys import Position
from projections.redis_layout import RedisLayout
from queries.tracking import POLL_SECONDS, PositionTracker

log = logging.getLogger("ams.gateway")


class AppliedPositions(PositionTracker):
    def __init__(self, client: aioredis.Redis, layout: RedisLayout, partitions: int) -> None:
        super().__init__()
        self.client, self.layout, self.partitions = client, layout, partitions
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.refresh()
        self._tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._poll())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def refresh(self) -> dict[int, int]:
        """Read every checkpoint from Redis; Redis is authoritative (after a flush it may go down)."""
        values = await self.client.mget([self.layout.checkpoint(partition) for partition in range(self.partitions)])
        self._set({partition: int(value) if value is not None else -1 for partition, value in enumerate(values)})
        return dict(self.applied)

    async def outcome(self, position: Position) -> dict[str, Any] | None:
        raw = await self.client.get(self.layout.outcome(position.partition, position.offset))
        return orjson.loads(raw) if raw is not None else None

    async def _listen(self) -> None:
        while True:
            try:
                pubsub = self.client.pubsub()
                await pubsub.subscribe(self.layout.applied_channel)
                async for message in pubsub.listen():
                    if message["type"] != "message":
                        continue
                    partition, _, offset = message["data"].decode().partition(":")
                    if int(offset) > self.applied.get(int(partition), -1):
                        self._set({int(partition): int(offset)})
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
