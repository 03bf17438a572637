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
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import redis.asyncio as aioredis
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from ams.auth import Unauthorized
from ams.http import ApiError
from ams.namespaces import ALL_TENANTS, Namespace
from ams.settings import Settings
from ams.tasks import cancel_all
from commands.http import CommandContext
from commands.log import EventLog, LogUnavailable
from projections.redis_layout import RedisLayout
from queries.cold import ColdStore
from queries.context import QueryContext
from queries.positions import AppliedChannels, AppliedPositions
from queries.vectors import VectorServices
from replay.sandboxes import SandboxSpec, follow_registry, registry_topic

log = logging.getLogger("ams.gateway")
HEADER = "x-ams-sandbox"
SANDBOX_HEADER = HEADER.encode()  # as ASGI gives header names: lower case bytes
# Starting or stopping one part of a sandbox's contexts takes milliseconds; past this (by default), something
# it waits for is stuck, and that sandbox (only that one) is reported unserved instead of waiting for ever.
# Live memory's start is not bounded: its vector view may have a large snapshot to load.
STEP_SECONDS = 20.0
# How long a request naming a sandbox this gateway does not serve waits for its registry follower to catch up.
CATCH_UP_SECONDS = 5.0
# A sandbox that did not start is tried again after this pause, doubled each time up to the maximum.
RETRY_FIRST_PAUSE = 1.0
RETRY_MAX_PAUSE = 60.0


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
        # Each registry record is applied in a task of its own (`_apply`): a sandbox slow to start (its
        # PostgreSQL schema not made yet, or never, when it is dropped at once) holds up no record after it.
        self._applying: dict[str, asyncio.Task[None]] = {}
        self.registry_read = 0  # the registry's offset up to which every record is applied or being applied
        self._registry_moved = asyncio.Event()

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
        await cancel_all(self._applying.values())
        served = [*self.sandboxes.values(), *([self.live] if self.live else [])]
        await asyncio.gather(*(namespace.stop() for namespace in served))
        await self.channels.stop()

    async def _follow(self) -> None:
        while True:
            try:
                following = follow_registry(self.settings, read_through=self._read_through)
                async with contextlib.aclosing(following) as registry:  # closed when cancelled
                    async for key, spec in registry:
                        await self._update_or_retry(key.decode(), spec)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - keep following through broker restarts
                log.warning("lost the sandbox registry (%r); following it again in 1s", error)
            await asyncio.sleep(1)

    async def _update_or_retry(self, key: str, spec: SandboxSpec | None) -> None:
        """Apply the registry's newest record of ``key`` in a task of its own, which supersedes the one of an
        older record of the key, so that the records after it (other sandboxes) are handled meanwhile."""
        pending = self._applying.pop(key, None)
        if pending is not None:
            await cancel_all([pending])
        self._applying[key] = asyncio.create_task(self._apply(key, spec))

    async def _apply(self, key: str, spec: SandboxSpec | None) -> None:
        """`_update`; a sandbox that does not start is reported and tried again after a pause that doubles."""
        pause = RETRY_FIRST_PAUSE
        while True:
            try:
                await self._update(key, spec)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - NotServed, or a backend down: tried again, never dropped
                log.warning("sandbox %s: %s; this gateway does not serve it, and tries again in %.0fs", key,
                            error, pause)
                await asyncio.sleep(pause)
                pause = min(2 * pause, RETRY_MAX_PAUSE)
            else:
                if self._applying.get(key) is asyncio.current_task():
                    del self._applying[key]
                return

    def _read_through(self, offset: int) -> None:
        if offset > self.registry_read:
            self.registry_read = offset
            self._registry_moved.set()
            self._registry_moved = asyncio.Event()

    async def catch_up(self, keys: Iterable[str] = (), seconds: float = CATCH_UP_SECONDS) -> None:
        """Wait until this gateway has read the sandbox registry up to where it ends now, and has applied its
        records of ``keys`` (``owner|name``), at most ``seconds`` in all: a sandbox created a moment ago,
        through another gateway (process) or the CLI, is then served."""
        try:
            end = await self.live_log.end_offset(registry_topic(self.settings))
        except LogUnavailable as error:
            log.warning("could not read where the sandbox registry ends (%s); answering from what is known", error)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while self.registry_read < end:
                    await self._registry_moved.wait()
                pending = [self._applying[key] for key in keys if key in self._applying]
                if pending:
                    await asyncio.wait(pending)

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

    def served(self, tenant: str, name: str) -> Served | None:
        """The sandbox ``name`` that ``tenant`` sees (its own, or one of every tenant's), if served here."""
        return self.sandboxes.get(f"{tenant}|{name}") or self.sandboxes.get(f"{ALL_TENANTS}|{name}")

    def resolve(self, request: Request) -> Served:
        name = request.headers.get(HEADER)
        if not name:
            assert self.live is not None, "the gateway has not started"
            return self.live
        served = self.served(request.state.principal.tenant, name)  # set by authorize(), called by every route
        if served is None:
            raise ApiError(404, "no_sandbox", f"no sandbox named {name!r}; list yours with GET /v1/sandboxes")
        return served


class SandboxesKnown:
    """A request naming a sandbox its gateway does not serve reaches its route only once the gateway has read
    the sandbox registry to its end, so a sandbox is usable the moment its creation returns, whichever gateway
    process created it (or the CLI). Requests for sandboxes already served, and without one, pass at once; a
    request whose token does not verify goes on unchanged, to be refused by its route."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and any(name == SANDBOX_HEADER for name, _ in scope["headers"]):
            headers = Headers(scope=scope)  # only for the few requests naming a sandbox
            if headers[HEADER]:  # empty: live memory, as in `resolve`
                await self._known(scope["app"].state, headers.get("authorization"), headers[HEADER])
        await self.app(scope, receive, send)

    async def _known(self, state: Any, authorization: str | None, name: str) -> None:
        try:
            tenant = state.verifier.verify(authorization).tenant
        except Unauthorized:
            return
        namespaces: GatewayNamespaces = state.namespaces
        if namespaces.served(tenant, name) is None:
            await namespaces.catch_up([f"{tenant}|{name}", f"{ALL_TENANTS}|{name}"])
