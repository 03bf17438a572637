"""How far the hot projection has applied the log, per partition, and waiting until it has applied more.

The projector announces every batch on a Redis channel (`projections.redis_layout.Announcement`; one
subscription per gateway carries the channels of all its namespaces), which also keeps the namespace's
hot-key cache (`queries.hot_cache`) current; a poll of the generation pointers and checkpoints every
``POLL_SECONDS`` covers missed messages, Redis restarts and rebuilds. Readers use
the generation seen here: after a rebuild moves a partition's pointer, the retired generation stays frozen
and readable (never newer than the new one) until it is dropped well after every gateway has moved on,
and waits are always measured in the generation being read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from ams.tasks import cancel_all
from commands.keys import Position
from projections.redis_layout import Announcement, ReadScript, RedisLayout
from queries.hot_cache import SYNC, HotCache, sync_call
from queries.tracking import POLL_SECONDS, PositionTracker

log = logging.getLogger("ams.gateway")


class AppliedChannels:
    """One Redis subscription carrying the applied-position channels of every namespace a gateway serves.

    A subscription per namespace held a Redis connection per sandbox (and leaked it when the sandbox went),
    so a few dozen sandboxes exhausted the client's pool."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        # Each handler gets a channel's messages, and None when the channel is (re)subscribed or the
        # subscription lost: what was published meanwhile is unknown.
        self._handlers: dict[bytes, Callable[[bytes | None], None]] = {}
        self._wanted = asyncio.Event()
        self._pubsub: PubSub | None = None
        self._task: asyncio.Task[None] | None = None

    async def subscribe(self, channel: str, handler: Callable[[bytes | None], None]) -> None:
        self._handlers[channel.encode()] = handler
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        if self._pubsub is not None:
            await self._pubsub.subscribe(channel)
        self._wanted.set()

    async def unsubscribe(self, channel: str) -> None:
        self._handlers.pop(channel.encode(), None)
        if self._pubsub is not None:
            with contextlib.suppress(RedisError):
                await self._pubsub.unsubscribe(channel)

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_all([self._task])

    async def _run(self) -> None:
        while True:
            await self._wanted.wait()
            if not self._handlers:
                self._wanted.clear()
                continue
            try:
                async with self.client.pubsub() as pubsub:
                    self._pubsub = pubsub  # first: a channel subscribed meanwhile is not missed
                    await pubsub.subscribe(*self._handlers)
                    async for message in pubsub.listen():  # ends when the last channel is unsubscribed
                        handler = self._handlers.get(message["channel"])
                        if handler is not None and message["type"] in ("message", "subscribe"):
                            # "subscribe" confirms a subscription, also one redis-py renews after reconnecting
                            handler(message["data"] if message["type"] == "message" else None)
                    self._wanted.clear()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - keep listening through Redis restarts
                log.warning("lost the projections' applied-position channels (%r); reconnecting", error)
                for handler in list(self._handlers.values()):
                    handler(None)
                await asyncio.sleep(0.5)
            finally:
                self._pubsub = None


# The outcomes of some events, with the live marker and checkpoint of their partitions (KEYS: the outcomes,
# then the markers, then the checkpoints; ARGV: how many outcomes, how many partitions). A script rather than
# a MULTI of three MGETs: as atomic, and 0.2 ms less per strong write through redis-py (measured). A missing
# key's GET is false in Lua, which keeps its place in the table and answers as nil.
READ_OUTCOMES = """
local outcomes, partitions = tonumber(ARGV[1]), tonumber(ARGV[2])
local function slice(from, count)
  local values = {}
  for i = from, from + count - 1 do values[#values + 1] = redis.call('GET', KEYS[i]) end
  return values
end
return {slice(1, outcomes), slice(outcomes + 1, partitions), slice(outcomes + partitions + 1, partitions)}
"""


class AppliedPositions(PositionTracker):
    """The hot projection's positions in one namespace, and the namespace's hot-key cache (None when
    ``hot_keys`` is 0) that the same announcements keep current."""

    def __init__(self, client: aioredis.Redis, layout: RedisLayout, partitions: int,
                 channels: AppliedChannels, hot_keys: int = 0) -> None:
        super().__init__()
        self.client, self.layout, self.partitions, self.channels = client, layout, partitions, channels
        self.generations: dict[int, int] = {partition: 0 for partition in range(partitions)}
        self.cache = HotCache(hot_keys, partitions) if hot_keys > 0 else None
        self._sync_channel = f"{layout.applied_channel}:sync:{uuid.uuid4().hex}"  # this gateway's own
        self._sync = client.register_script(SYNC)
        self._read_outcomes = ReadScript(client, READ_OUTCOMES)
        self._poll_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.refresh()
        await self.channels.subscribe(self.layout.applied_channel, self._on_applied)
        if self.cache is not None:
            await self.channels.subscribe(self._sync_channel, self._on_sync)
        self._tasks = [asyncio.create_task(self._poll())]

    async def stop(self) -> None:
        await self.channels.unsubscribe(self.layout.applied_channel)
        if self.cache is not None:
            await self.channels.unsubscribe(self._sync_channel)
            self.cache.unsettle()
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
        moved = [partition for partition in partitions if generations[partition] != self.generations[partition]]
        self.generations = generations
        if moved and self.cache is not None:
            self.cache.unsettle(moved)  # a rebuild switched them: what was cached came from the retired generation
        self._set({partition: int(value) if value is not None else -1 for partition, value in enumerate(checkpoints)})
        return dict(self.applied)

    async def outcomes(self, positions: list[Position]) -> list[dict[str, Any] | None] | None:
        """The outcome of each applied event the fold did not accept (None: accepted); None for the whole
        list when Redis cannot vouch for them: a partition lost its data since (its marker is gone, or its
        checkpoint fell below the position) and is being restored. The outcomes are read in one script with
        the markers and checkpoints, so a flush cannot slip between them."""
        partitions = sorted({position.partition for position in positions})
        keys = [*(self.layout_of(position.partition).outcome(position.partition, position.offset)
                  for position in positions),
                *(self.layout_of(p).live(p) for p in partitions),
                *(self.layout_of(p).checkpoint(p) for p in partitions)]
        found, markers, checkpoints = await self._read_outcomes(keys, [len(positions), len(partitions)])
        reached = {p: int(value) if value is not None else -1 for p, value in zip(partitions, checkpoints, strict=True)}
        if None in markers or any(reached[position.partition] < position.offset for position in positions):
            await self.refresh()  # so that waiting for the positions waits for the restored partition
            return None
        if self.cache is not None:  # the writer is told: this gateway's reads must not show less from now on
            for partition, checkpoint in reached.items():
                self.cache.showed(partition, checkpoint)
        return [orjson.loads(raw) if raw is not None else None for raw in found]

    def _on_applied(self, message: bytes | None) -> None:
        if message is None:
            self._lost_track()
            return
        announcement = Announcement.parse(message)
        partition, offset = announcement.partition, announcement.offset
        current = announcement.generation == self.generations.get(partition)
        if current and offset > self.applied.get(partition, -1):
            self._set({partition: offset})
        if self.cache is not None:
            self.cache.announced(announcement, current)

    def _on_sync(self, message: bytes | None) -> None:
        assert self.cache is not None  # subscribed only with a cache
        if message is None:
            self._lost_track()
        else:
            self.cache.synced(message, self.generations)

    def _lost_track(self) -> None:
        """The subscription is new or lost: the cache cannot vouch for anything until the next sync."""
        if self.cache is not None:
            self.cache.unsettle()
            self._poll_now.set()

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_SECONDS):
                    await self._poll_now.wait()
            self._poll_now.clear()
            try:
                await self.refresh()
                if self.cache is not None:
                    keys, args = sync_call(self.layout, self.generations, self._sync_channel)
                    await self._sync(keys=keys, args=args)
            except Exception as error:  # noqa: BLE001 - keep polling through Redis restarts
                log.warning("could not read the projection's checkpoints (%r)", error)
