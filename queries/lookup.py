"""Reading a key's current value: from Redis when Redis can be trusted, else from PostgreSQL.

Redis is trusted for a key when its partition is *live* (the projector's marker, which Redis loses with
its data) and has applied the caller's consistency token. The marker, the checkpoint and the record are
read in one MULTI, so a flush can never slip between them. Otherwise the read goes to PostgreSQL, once
PostgreSQL has applied both the caller's token and the highest position this gateway ever saw Redis
apply for the key's partition: a caller never reads a value older than one it was already shown or told
was written.

A Redis miss in a live partition is checked against PostgreSQL too (a record may have been evicted);
PostgreSQL's record is served only if PostgreSQL has applied at least as much of the partition as Redis.
Whatever is served from PostgreSQL is then written back into Redis with `projections.redis_restore.
warm_record`, which refuses unless the write is safe for the Redis projector (see there).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from prometheus_client import Counter
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ams.http import ApiError
from commands.envelope import now_ms
from commands.fold import visible
from commands.keys import format_positions, kafka_key, partition_for
from projections.redis_restore import warm_record
from queries.cold import ColdRecord
from queries.context import QueryContext
from queries.hot_cache import Current, HotCache
from queries.tracking import first_reached

log = logging.getLogger("ams.gateway")

REDIS_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, BusyLoadingError)
COLD_READS = Counter("ams_gateway_cold_reads", "Current-value reads served from PostgreSQL", ["reason"])
REWARMED = Counter("ams_gateway_rewarmed_keys", "Keys written back into Redis after a read from PostgreSQL")


@dataclass(frozen=True, slots=True)
class HotRead:
    value: bytes | None
    version: int | None
    expires: int
    deleted: bool
    checkpoint: int
    live: bool

    def current(self, partition: int, now: int) -> Current | None:
        if self.value is None or self.version is None or self.deleted or (self.expires and self.expires <= now):
            return None
        return Current(self.value, self.version, partition)


async def read_current(ctx: QueryContext, tenant: str, key: str, positions: dict[int, int]) -> Current | None:
    """The key's live value, at or after ``positions``; None if it does not exist."""
    name = kafka_key(tenant, key)
    cache = ctx.applied.cache
    if cache is not None:
        cached = cache.get(name, positions, now_ms())
        if cached is not None:
            return cached
    home = partition_for(name, ctx.partitions)
    return await _read(ctx, tenant, key, home, positions, Caching(cache, name, home))


class Caching:
    """What a read that missed the hot-key cache tells it (see `queries.hot_cache`); nothing when it is off."""

    __slots__ = ("cache", "home", "name", "ticket")

    def __init__(self, cache: HotCache | None, name: bytes, home: int) -> None:
        self.cache, self.name, self.home = cache, name, home
        self.ticket = cache.ticket() if cache is not None else None  # before the read begins

    def served_hot(self, hot: HotRead, current: Current | None) -> None:
        if self.cache is not None and self.ticket is not None:
            self.cache.showed(self.home, hot.checkpoint)
            if current is not None:
                self.cache.put(self.ticket, self.name, current, hot.expires)

    def served_cold(self, cold: ColdRecord) -> None:
        if self.cache is not None:
            self.cache.showed(self.home, cold.checkpoint)

    def not_live(self) -> None:
        """Redis lost the partition's data: nothing cached can be vouched for."""
        if self.cache is not None:
            self.cache.unsettle([self.home])


async def _read(ctx: QueryContext, tenant: str, key: str, home: int, positions: dict[int, int],
                caching: Caching) -> Current | None:
    started = time.monotonic()
    timeout = ctx.settings.read_wait_timeout
    winner = await first_reached([ctx.applied, ctx.cold], positions, timeout)
    if winner is None:
        raise ApiError(504, "consistency_timeout",
                       f"no projection has applied {format_positions(positions)} within {timeout:g}s; retry the read")
    hot: HotRead | None = None
    if winner is ctx.applied:
        hot = await _read_hot(ctx, home, tenant, key)
        if hot is not None and hot.live and hot.checkpoint >= positions.get(home, -1):
            current = hot.current(home, now_ms())
            caching.served_hot(hot, current)
            if hot.version is not None:
                return current
            return await _check_miss(ctx, tenant, key, home, hot.checkpoint, caching)
        if hot is not None and not hot.live:
            caching.not_live()
    if winner is ctx.cold or (hot is not None and hot.live):
        reason = "redis_behind"  # PostgreSQL reached the caller's token first
    else:
        reason = "redis_unavailable" if hot is None else "redis_incomplete"
    required = {**positions, home: max(positions.get(home, -1), ctx.applied.high_water.get(home, -1))}
    remaining = max(0.0, timeout - (time.monotonic() - started))
    if not await ctx.cold.wait_applied(required, remaining):
        raise ApiError(
            504, "consistency_timeout",
            f"the hot projection cannot serve this read ({reason.replace('_', ' ')}) and PostgreSQL has not "
            f"applied {format_positions(required)} within {timeout:g}s; retry the read",
        )
    cold = await ctx.cold.current(tenant, key, home)
    COLD_READS.labels(reason).inc()
    caching.served_cold(cold)
    if hot is not None:
        await _warm(ctx, home, tenant, key, cold)
    return _visible(cold, home)


async def _read_hot(ctx: QueryContext, home: int, tenant: str, key: str) -> HotRead | None:
    """The record, the checkpoint and the live marker of its partition, read atomically; None if Redis is down."""
    try:
        layout = ctx.applied.layout_of(home)
        keys = [layout.record(home, tenant, key), layout.checkpoint(home), layout.live(home)]
        (value, version, expires, deleted), checkpoint, live = await ctx.read_record(keys)
    except REDIS_UNAVAILABLE as error:
        _warn_redis_unavailable(error)
        return None
    return HotRead(value, int(version) if version is not None else None, int(expires or 0), deleted == b"1",
                   int(checkpoint) if checkpoint is not None else -1, bool(live))


class _Throttle:
    """Lets something happen at most once per ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self._last = seconds, -seconds

    def ready(self) -> bool:
        if time.monotonic() - self._last < self.seconds:
            return False
        self._last = time.monotonic()
        return True


_outage_warning = _Throttle(10.0)


def _warn_redis_unavailable(error: Exception) -> None:
    """Say so now and then, not on every read while Redis is down."""
    if _outage_warning.ready():
        log.warning("Redis is unavailable (%r); current values are read from PostgreSQL until it is back "
                    "(counted in ams_gateway_cold_reads_total)", error)


async def _check_miss(ctx: QueryContext, tenant: str, key: str, home: int, redis_checkpoint: int,
                      caching: Caching) -> Current | None:
    try:
        cold = await ctx.cold.current(tenant, key, home)
    except ApiError:
        return None  # PostgreSQL is unavailable: the live Redis partition's answer stands
    if cold.record is None or cold.checkpoint < redis_checkpoint:
        return None
    COLD_READS.labels("redis_miss").inc()
    caching.served_cold(cold)
    await _warm(ctx, home, tenant, key, cold)
    return _visible(cold, home)


async def _warm(ctx: QueryContext, home: int, tenant: str, key: str, cold: ColdRecord) -> None:
    if cold.record is None:
        return
    try:
        if await warm_record(ctx.redis, ctx.applied.layout_of(home), home, tenant, key, cold.record, now_ms()):
            REWARMED.inc()
    except REDIS_UNAVAILABLE as error:
        log.warning("could not re-warm key %r of tenant %r in Redis (%r)", key, tenant, error)


def _visible(cold: ColdRecord, home: int) -> Current | None:
    record = visible(cold.record, now_ms())
    if record is None or cold.raw_value is None:
        return None
    return Current(cold.raw_value, record.version, home)
