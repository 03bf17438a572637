"""Which namespace a request is served from: live memory, or the sandbox named in ``X-AMS-Sandbox``.

The gateway follows the sandbox registry and keeps, per sandbox, the same contexts the live namespace has:
the command side appends to the sandbox's topic, the query side reads the sandbox's projections, vector
search reads the sandbox's FAISS view.
A sandbox belongs to a tenant (or to all tenants, an operator's sandbox, in which each tenant still sees
only its own keys); another tenant's sandbox is simply not there, as a missing key is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, replace

import redis.asyncio as aioredis
from starlette.requests import Request

from ams.http import ApiError
from ams.namespaces import ALL_TENANTS, Namespace
from ams.settings import Settings
from commands.http import CommandContext
from commands.log import EventLog
from projections.redis_layout import RedisLayout
from queries.cold import ColdStore
from queries.context import QueryContext
from queries.positions import AppliedChannels, AppliedPositions
from queries.vectors import VectorServices
from replay.sandboxes import SandboxSpec, follow_registry

log = logging.getLogger("ams.gateway")
HEADER = "x-ams-sandbox"


@dataclass
class Served:
    namespace: Namespace
    commands: CommandContext
    queries: QueryContext
    vectors: VectorServices

    async def stop(self) -> None:
        await self.vectors.stop()
        await self.queries.applied.stop()
        await self.queries.cold.stop()


class GatewayNamespaces:
    def __init__(self, settings: Settings, redis_client: aioredis.Redis, live_log: EventLog) -> None:
        self.settings, self.redis, self.live_log = settings, redis_client, live_log
        self.live: Served | None = None
        self.sandboxes: dict[str, Served] = {}  # "<owner>|<name>" -> contexts
        self._follower: asyncio.Task[None] | None = None
        self.channels = AppliedChannels(redis_client)
        # The registry follower and this gateway's own creations update the served sandboxes one at a time:
        # interleaved, both served a new sandbox and one of the two was never stopped (its pollers leaked).
        self._updating = asyncio.Lock()

    async def serve(self, namespace: Namespace) -> Served:
        applied = AppliedPositions(self.redis, RedisLayout(namespace.redis_prefix), self.live_log.partitions,
                                   self.channels)
        await applied.start()
        cold = ColdStore(replace(self.settings, postgres_schema=namespace.postgres_schema),
                         home=self.settings.postgres_schema)
        await cold.start()
        vectors = VectorServices(self.settings, self.redis, namespace)
        try:
            await vectors.start()
        except BaseException:
            await cold.stop()
            await applied.stop()
            raise
        event_log = self.live_log if namespace.is_live else self.live_log.at(namespace.topic)
        return Served(namespace, CommandContext(self.settings, event_log, applied),
                      QueryContext(self.settings, self.redis, applied, self.live_log.partitions, cold), vectors)

    async def start(self, live: Namespace) -> None:
        self.live = await self.serve(live)
        self._follower = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        served = [*self.sandboxes.values(), *([self.live] if self.live else [])]
        await asyncio.gather(*(namespace.stop() for namespace in served))
        await self.channels.stop()

    async def _follow(self) -> None:
        while True:
            try:
                async with contextlib.aclosing(follow_registry(self.settings)) as registry:  # closed when cancelled
                    async for key, spec in registry:
                        await self._update(key.decode(), spec)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - keep following through broker restarts
                log.warning("lost the sandbox registry (%r); following it again", error)
                await asyncio.sleep(1)

    async def _update(self, key: str, spec: SandboxSpec | None) -> None:
        async with self._updating:
            if spec is not None and key in self.sandboxes:
                return  # already served (this gateway created it)
            previous = self.sandboxes.pop(key, None)
            if previous is not None:
                await previous.stop()
            if spec is not None:
                self.sandboxes[key] = await self.serve(spec.namespace(self.settings))

    async def include(self, spec: SandboxSpec) -> None:
        """Serve a sandbox this gateway just created, without waiting to read it back from the registry."""
        await self._update(spec.registry_key.decode(), spec)

    def resolve(self, request: Request) -> Served:
        name = request.headers.get(HEADER)
        if not name:
            assert self.live is not None, "the gateway has not started"
            return self.live
        tenant = request.state.principal.tenant  # set by authorize(), which every route calls first
        served = self.sandboxes.get(f"{tenant}|{name}") or self.sandboxes.get(f"{ALL_TENANTS}|{name}")
        if served is None:
            raise ApiError(404, "no_sandbox", f"no sandbox named {name!r}; list yours with GET /v1/sandboxes")
        return served
