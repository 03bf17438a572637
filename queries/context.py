"""What every query route reads from: the projections' clients, shared through the app's state."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from starlette.requests import Request

from ams.auth import Principal, TokenVerifier
from ams.settings import Settings
from projections.redis_layout import RedisLayout
from queries.cold import ColdStore
from queries.positions import AppliedPositions


@dataclass
class QueryContext:
    settings: Settings
    redis: aioredis.Redis
    layout: RedisLayout
    applied: AppliedPositions
    verifier: TokenVerifier
    partitions: int
    cold: ColdStore  # PostgreSQL: cold reads, history, time travel, streams, the audit feed, watch


def context(request: Request) -> QueryContext:
    ctx: QueryContext = request.app.state.queries
    return ctx


def authorize(request: Request, scope: str) -> Principal:
    principal = context(request).verifier.verify(request.headers.get("authorization"))
    principal.require(scope)
    return principal
