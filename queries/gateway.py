"""The gateway process: one Starlette app serving the command routes and the query routes.

It reads only from projections; its writes only append to the log.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ams.auth import READ, TokenVerifier
from ams.http import EXCEPTION_HANDLERS, BodyLimitMiddleware, json_response
from ams.settings import Settings
from commands import http as command_http
from commands.log import EventLog
from projections.redis_layout import RedisLayout
from queries import kv, vectors
from queries.context import QueryContext, authorize, context
from queries.positions import AppliedPositions


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    ctx = context(request)
    try:
        await ctx.redis.ping()
    except Exception as error:  # noqa: BLE001 - any failure means "not ready"
        return json_response({"status": "not ready", "reason": f"redis: {error}"}, 503)
    return json_response({"status": "ready"})


async def metrics(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def positions(request: Request) -> Response:
    authorize(request, READ)
    ctx = context(request)
    applied = await ctx.applied.refresh()
    log = request.app.state.commands.log
    heads = await log.end_offsets()
    return json_response({
        "projections": {
            "redis": {str(partition): {"applied": offset, "lag": max(0, heads[partition] - 1 - offset)}
                      for partition, offset in applied.items()},
            "vectors": vectors.services(request).positions(heads),
        },
        "log": {str(partition): head for partition, head in heads.items()},
    })


def create_app(settings: Settings) -> Starlette:
    redis_client = aioredis.from_url(settings.redis_url)
    layout = RedisLayout(settings.redis_prefix)
    verifier = TokenVerifier(settings)
    event_log = EventLog(settings.kafka_bootstrap, settings.events_topic)
    vector_services = vectors.VectorServices(settings, redis_client)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await event_log.start()
        applied = AppliedPositions(redis_client, layout, event_log.partitions)
        await applied.start()
        app.state.queries = QueryContext(settings, redis_client, layout, applied, verifier, event_log.partitions)
        app.state.commands = command_http.CommandContext(settings, event_log, applied, verifier)
        await vector_services.start()
        app.state.vectors, app.state.vector_dimensions = vector_services, vector_services.dimensions
        try:
            yield
        finally:
            await vector_services.stop()
            await applied.stop()
            await event_log.stop()
            await redis_client.aclose()

    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/v1/positions", positions),
        *command_http.routes,
        *kv.routes,
        *vectors.routes,
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        middleware=[Middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)],
    )
