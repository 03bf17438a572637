"""The gateway process: one Starlette app serving the command routes and the query routes.

It reads only from projections; its writes only append to the log.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.multiprocess import MultiProcessCollector
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ams.auth import READ, TokenVerifier
from ams.http import EXCEPTION_HANDLERS, ApiError, BodyLimitMiddleware, RateLimiter, error_response, json_response
from ams.namespaces import live
from ams.settings import Settings
from commands import batch as command_batch
from commands import http as command_http
from commands.log import EventLog
from queries import events, history, kv, openapi, records, streams, vectors, watch
from queries.context import authorize, context
from queries.namespaces import GatewayNamespaces, SandboxesKnown
from replay import http as replay_http


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Unauthenticated, so it names no namespace: an X-AMS-Sandbox header is not looked at (it needed a
    verified token, and answered 500 without one)."""
    try:
        await request.app.state.namespaces.redis.ping()
    except Exception as error:  # noqa: BLE001 - any failure means "not ready"
        return json_response({"status": "not ready", "reason": f"redis: {error}"}, 503)
    return json_response({"status": "ready"})


def metrics_registry() -> CollectorRegistry:
    """This process's metrics; when gateway processes share a port (``PROMETHEUS_MULTIPROC_DIR`` set, see
    `compose.gateways`), those of every process of the group, whichever process answers."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return registry


async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)


async def positions(request: Request) -> Response:
    authorize(request, READ)
    ctx = context(request)
    applied = await ctx.applied.refresh()
    heads = await command_http.command_context(request).log.end_offsets()
    try:
        durable = await ctx.cold.refresh()
    except ApiError as error:  # PostgreSQL is down: report what it had applied when last seen
        durable = dict(ctx.cold.applied)
        warnings = {"postgres": error.message}
    else:
        warnings = {}
    return json_response({
        "projections": {
            "redis": {str(partition): {"applied": offset, "lag": max(0, heads[partition] - 1 - offset)}
                      for partition, offset in applied.items()},
            "postgres": {str(partition): {"applied": offset, "lag": max(0, heads[partition] - 1 - offset)}
                         for partition, offset in sorted(durable.items()) if partition in heads},
            "vectors": vectors.services(request).positions(heads),
        },
        "log": {str(partition): head for partition, head in heads.items()},
        **({"unavailable": warnings} if warnings else {}),
    })


async def projection_unavailable(request: Request, error: Exception) -> Response:
    message = (f"the hot projection (Redis) is unreachable ({type(error).__name__}: {error}); retry in a moment, "
               "a write with the same Idempotency-Key is applied once")
    return error_response(503, "projection_unavailable", message, {"Retry-After": "1"})


PROJECTION_DOWN_HANDLERS = {
    kind: projection_unavailable for kind in (RedisConnectionError, RedisTimeoutError, BusyLoadingError)
}


def create_app(settings: Settings) -> Starlette:
    # A command that meets a connection Redis closed (it restarted) is sent again on a fresh one: the gateway
    # only reads Redis, so a retry is harmless, and a restart does not fail one request per pooled connection.
    redis_client = aioredis.from_url(settings.redis_url, retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
                                     retry_on_error=[RedisConnectionError])
    event_log = EventLog(settings.kafka, settings.events_topic,
                         transactional_id=f"ams-gateway-{settings.gateway_instance}", timeout=settings.log_timeout)
    namespaces = GatewayNamespaces(settings, redis_client, event_log)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await event_log.start()
        await namespaces.start(live(settings))
        app.state.verifier = TokenVerifier(settings)
        app.state.rate_limiter = RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)
        app.state.namespaces = namespaces
        app.state.event_log = event_log
        app.state.metrics = metrics_registry()
        try:
            yield
        finally:
            await namespaces.stop()
            await event_log.stop()
            await redis_client.aclose()
            if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
                multiprocess.mark_process_dead(os.getpid())  # its gauges no longer count; its counters still do

    # Starlette tries routes in order, a regular expression each: the hottest (a key's reads and writes) first.
    routes = [
        *history.routes,  # before kv's: /v1/kv/{key}/history is not a key
        *kv.routes,
        *command_http.routes,
        *command_batch.routes,
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        *openapi.routes,
        Route("/v1/positions", positions),
        *records.routes,
        *streams.routes,
        *events.routes,
        *watch.routes,
        *replay_http.routes,
        *vectors.routes,
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={**EXCEPTION_HANDLERS, **PROJECTION_DOWN_HANDLERS},  # type: ignore[dict-item]
        middleware=[
            Middleware(BodyLimitMiddleware, limit=settings.max_body_bytes, timeout=settings.body_timeout_seconds),
            Middleware(SandboxesKnown),
        ],
    )
