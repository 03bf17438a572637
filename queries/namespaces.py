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
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from typing import Protocol

import redis.asyncio as aioredis
from starlette.requests import Request

from ams.http import ApiError
from ams.namespaces import ALL_TENANTS, Namespace
from ams.settings import Settings
from ams.tasks import cancel_all
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
# Starting or stopping one part of a sandbox's contexts takes milliseconds; past this (by default), something
# it waits for is stuck, and that sandbox (only that one) is reported unserved instead of waiting for ever.
# Live memory's start is not bounded: its vector view may have a large snapshot to load.
STEP_SECONDS = 20.0


class NotServed(Exception):
    """A part of a namespace's contexts did not start (or stop) in time; the message says which."""


async def _bounded(what: str, step: Awaitable[None], seconds: float | None) -> None:
    try:
        async with asyncio.timeout(seconds):
            await step
    except TimeoutError:
        raise NotServed(f"{what} did not finish within {seconds:g}s") from None


class Part(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def _parts(applied: AppliedPositions, cold: ColdStore, vectors: VectorServices) -> list[tuple[str, Part]]:
    """A namespace's parts, named, in the order they start (they stop in the reverse order)."""
    return [("its Redis positions", applied), ("its PostgreSQL reader", cold), ("its vector view", vectors)]


async def _stop_parts(label: str, parts: list[tuple[str, Part]], seconds: float) -> None:
    """Stop the parts, last started first, each bounded: a part that cannot stop is logged and left behind."""
    for what, part in reversed(parts):
        try:
            await _bounded(f"{label}: stopping {what}", part.stop(), seconds)
        except NotServed as error:
            log.warning("%s; left behind", error)


@dataclass
class Served:
    namespace: Namespace
    commands: CommandContext
    queries: QueryContext
    vectors: VectorServices
    step_seconds: float  # the bound on stopping each part

    async def stop(self) -> None:
        await _stop_parts(self.namespace.label, _parts(self.queries.applied, self.queries.cold, self.vectors),
                          self.step_seconds)


class GatewayNamespaces:
    def __init__(self, settings: Settings, redis_client: aioredis.Redis, live_log: EventLog,
                 step_seconds: float = STEP_SECONDS) -> None:
        self.settings, self.redis, self.live_log = settings, redis_client, live_log
        self.step_seconds = step_seconds
        self.live: Served | None = None
        self.sandboxes: dict[str, Served] = {}  # "<owner>|<name>" -> contexts
        self._follower: asyncio.Task[None] | None = None
        self.channels = AppliedChannels(redis_client)
        # The registry follower and this gateway's own creations update each sandbox one at a time:
        # interleaved, both served a new sandbox and one of the two was never stopped (its pollers leaked).
        # One lock per sandbox, so that a sandbox slow to start or stop holds up no other (a few bytes per
        # sandbox this gateway ever saw; dropping one while a waiter is about to take it would let two in).
        self._updating: dict[str, asyncio.Lock] = {}

    async def serve(self, namespace: Namespace) -> Served:
        """The namespace's contexts, started; NotServed names the part that did not start."""
        applied = AppliedPositions(self.redis, RedisLayout(namespace.redis_prefix), self.live_log.partitions,
                                   self.channels, self.settings.hot_cache_keys)
        cold = ColdStore(replace(self.settings, postgres_schema=namespace.postgres_schema),
                         home=self.settings.postgres_schema)
        vectors = VectorServices(self.settings, self.redis, namespace)
        begun: list[tuple[str, Part]] = []
        try:
            for what, part in _parts(applied, cold, vectors):
                begun.append((what, part))  # one that fails to start may hold something already: it is stopped too
                await _bounded(f"{namespace.label}: starting {what}", part.start(),
                               None if namespace.is_live else self.step_seconds)
        except BaseException:
            await _stop_parts(namespace.label, begun, self.step_seconds)
            raise
        event_log = self.live_log if namespace.is_live else self.live_log.at(namespace.topic)
        return Served(namespace, CommandContext(self.settings, event_log, applied),
                      QueryContext(self.settings, self.redis, applied, self.live_log.partitions, cold), vectors,
                      self.step_seconds)

    async def start(self, live: Namespace) -> None:
        self.live = await self.serve(live)
        self._follower = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._follower is not None:
            await cancel_all([self._follower])
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
            except NotServed as error:
                log.warning("%s; reading the sandbox registry again in 1s to retry", error)
            except Exception as error:  # noqa: BLE001 - keep following through broker restarts
                log.warning("lost the sandbox registry (%r); following it again in 1s", error)
            await asyncio.sleep(1)

    async def _update(self, key: str, spec: SandboxSpec | None) -> None:
        lock = self._updating.setdefault(key, asyncio.Lock())
        async with lock:
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
