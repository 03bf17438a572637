"""What every query route reads from: the projections' clients, shared through the app's state."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from starlette.requests import Request

from ams.http import authorize
from ams.settings import Settings
from queries.cold import ColdStore
from queries.positions import AppliedPositions


@dataclass
class QueryContext:
    settings: Settings
    redis: aioredis.Redis
    applied: AppliedPositions
    partitions: int
    cold: ColdStore  # PostgreSQL: cold reads, history, time travel, streams, the audit feed, watch


def context(request: Request) -> QueryContext:
    """The read side of the namespace the request names: live, or the sandbox in ``X-AMS-Sandbox``."""
    ctx: QueryContext = request.app.state.namespaces.resolve(request).queries
    return ctx


__all__ = ["QueryContext", "authorize", "context"]
