"""The source of truth `ams reindex` checks the vector views against: every key's current record.

`CurrentRecords` is the port; `RedisCurrentRecords` reads the hot projection's records (through
`projections.redis_layout`). A PostgreSQL current-state adapter implements the same three methods.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis

from projections.redis_layout import RedisLayout

PAGE = 500


@dataclass(frozen=True, slots=True)
class CurrentRecord:
    tenant: str
    key: str
    version: int
    value: Any
    expires_at: int | None


class CurrentRecords(Protocol):
    async def applied(self) -> dict[int, int]:
        """The last offset of each ``memory.events`` partition that the source reflects."""

    def tenants(self) -> AsyncIterator[str]:
        """Every tenant that has records."""

    def records(self, tenant: str, now: int) -> AsyncIterator[CurrentRecord]:
        """The tenant's live records (not deleted, not expired at ``now``)."""


class RedisCurrentRecords:
    def __init__(self, client: aioredis.Redis, layout: RedisLayout, partitions: int) -> None:
        self.client, self.layout, self.partitions = client, layout, partitions

    async def _live(self) -> list[RedisLayout]:
        """Each partition's layout at the generation readers use (a rebuild moves it; see redis_layout.py)."""
        pointers = await self.client.mget([self.layout.pointer(partition) for partition in range(self.partitions)])
        return [self.layout.at(int(pointer or 0)) for pointer in pointers]

    async def applied(self) -> dict[int, int]:
        layouts = await self._live()
        values = await self.client.mget([layouts[p].checkpoint(p) for p in range(self.partitions)])
        return {partition: int(value) if value is not None else -1 for partition, value in enumerate(values)}

    async def tenants(self) -> AsyncIterator[str]:
        seen: set[str] = set()
        layouts = await self._live()
        for partition in range(self.partitions):
            prefix = layouts[partition].index(partition, "")
            async for name in self.client.scan_iter(match=f"{_escape(prefix)}*", count=1000):
                tenant = bytes(name).decode()[len(prefix):]
                if tenant not in seen:
                    seen.add(tenant)
                    yield tenant

    async def records(self, tenant: str, now: int) -> AsyncIterator[CurrentRecord]:
        layouts = await self._live()
        for partition in range(self.partitions):
            layout = layouts[partition]
            members = await self.client.zrange(layout.index(partition, tenant), 0, -1)
            keys = [bytes(member).decode() for member in members]  # type: ignore[arg-type]
            for start in range(0, len(keys), PAGE):
                page = keys[start:start + PAGE]
                async with self.client.pipeline(transaction=False) as pipe:
                    for key in page:
                        pipe.hmget(layout.record(partition, tenant, key), ["value", "version", "expires", "deleted"])
                    answers = await pipe.execute()
                for key, (value, version, expires, deleted) in zip(page, answers, strict=True):
                    expires_at = int(expires or 0) or None
                    if value is None or deleted == b"1" or (expires_at is not None and expires_at <= now):
                        continue
                    yield CurrentRecord(tenant, key, int(version), orjson.loads(value), expires_at)


def _escape(pattern: str) -> str:
    """A literal for Redis glob patterns (the layout's hash tags contain braces, which are literal, but
    tenants and prefixes may contain characters that globs treat specially)."""
    return "".join(f"\\{char}" if char in "*?[]\\" else char for char in pattern)
