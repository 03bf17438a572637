"""What every rebuild shares: the state it publishes (`GET /v1/admin/rebuilds/<projection>`) and the lifecycle
that publishes it: saved as it starts, and as done or failed, with why, when it ends however it ends."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field

import orjson
import redis.asyncio as aioredis

from projections.redis_layout import RedisLayout

GRACE_SECONDS = 3.0  # > several gateway polls (0.5 s) before what a rebuild retired is dropped
STATE_DAYS = 7  # how long the last rebuild's state stays to be read


@dataclass
class RebuildState:
    """What `GET /v1/admin/rebuilds/<projection>` reports, kept in Redis while a rebuild runs and after."""

    projection: str
    generation: int
    state: str = "building"  # starting -> building -> dropping -> done | failed
    applied: int = 0
    total: int = 0
    events_per_second: float = 0.0
    eta_seconds: float | None = None
    switched: list[int] = field(default_factory=list)
    workers: int = 0
    started: float = field(default_factory=time.time)
    finished: float | None = None
    error: str | None = None


async def save_state(client: aioredis.Redis, layout: RedisLayout, state: RebuildState) -> None:
    await client.set(layout.rebuild_state(state.projection), orjson.dumps(asdict(state)), ex=STATE_DAYS * 86400)


async def read_state(client: aioredis.Redis, layout: RedisLayout, projection: str) -> dict[str, object] | None:
    raw = await client.get(layout.rebuild_state(projection))
    return orjson.loads(raw) if raw is not None else None


@contextlib.asynccontextmanager
async def recorded(client: aioredis.Redis, layout: RedisLayout, state: RebuildState) -> AsyncIterator[RebuildState]:
    """One rebuild's lifecycle, as readers of its state see it: saved now; done when the block ends, failed
    (with the error) when it raises or is cancelled; saved again either way."""
    await save_state(client, layout, state)
    try:
        yield state
        state.state = "done"
    except BaseException as error:
        state.state, state.error = "failed", str(error) or repr(error)
        raise
    finally:
        state.finished = time.time()
        await save_state(client, layout, state)
