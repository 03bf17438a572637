"""The sandboxes a gateway serves: one slow to start holds up no other, and says which part is stuck."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from ams.settings import Settings
from ams.tasks import cancel_all
from commands.log import EventLog
from queries.namespaces import GatewayNamespaces, NotServed
from replay.sandboxes import SandboxSpec, _register, create_sandbox, drop_sandbox

pytestmark = pytest.mark.stack


@pytest.fixture
async def gateway_namespaces(settings: Settings) -> AsyncIterator[GatewayNamespaces]:
    """A gateway's namespaces, without the live one or the registry follower: only what a test includes. Each
    part of a sandbox must start within 10 s (the default is 20)."""
    client = aioredis.from_url(settings.redis_url)
    event_log = EventLog(settings.kafka, settings.events_topic,
                         transactional_id=f"test-namespaces-{uuid.uuid4().hex}", timeout=settings.log_timeout)
    await event_log.start()
    served = GatewayNamespaces(settings, client, event_log, step_seconds=10.0)
    try:
        yield served
    finally:
        await served.stop()
        await event_log.stop()
        await client.aclose()


async def test_a_sandbox_that_cannot_start_names_the_stuck_part_and_holds_up_no_other(
    gateway_namespaces: GatewayNamespaces, settings: Settings, tenant: str
) -> None:
    # Registered once, its topics since deleted: its vector view waits for an embeddings stream that is gone.
    ghost = SandboxSpec(tenant, f"ghost-{uuid.uuid4().hex[:6]}")
    real = await create_sandbox(settings, tenant, f"real-{uuid.uuid4().hex[:6]}")
    try:
        stuck = asyncio.create_task(gateway_namespaces.include(ghost))
        await asyncio.sleep(0.2)
        async with asyncio.timeout(5):  # meanwhile another sandbox starts at once
            await gateway_namespaces.include(real)
        assert not stuck.done()
        assert f"{tenant}|{real.name}" in gateway_namespaces.sandboxes

        with pytest.raises(NotServed, match=f"sandbox {tenant}/{ghost.name}: starting its vector view did not "
                                            "finish within 10s"):
            await stuck
        assert f"{tenant}|{ghost.name}" not in gateway_namespaces.sandboxes
    finally:
        await drop_sandbox(settings, tenant, real.name)


async def test_a_registered_sandbox_that_cannot_start_holds_up_no_later_one_and_is_retried(
    gateway_namespaces: GatewayNamespaces, settings: Settings, tenant: str
) -> None:
    """A registration without topics (written past AMS) once made the registry follower read the registry
    again and again, stuck on it each time: no sandbox registered after it was ever served."""
    ghost = SandboxSpec(tenant, f"ghost-{uuid.uuid4().hex[:6]}")
    await _register(settings, ghost.registry_key, ghost)
    following = asyncio.create_task(gateway_namespaces._follow())
    real = await create_sandbox(settings, tenant, f"real-{uuid.uuid4().hex[:6]}")
    try:
        async with asyncio.timeout(60):
            while f"{tenant}|{real.name}" not in gateway_namespaces.sandboxes:
                await asyncio.sleep(0.2)
        assert f"{tenant}|{ghost.name}" in gateway_namespaces._applying  # still being tried
        assert f"{tenant}|{ghost.name}" not in gateway_namespaces.sandboxes
    finally:
        await cancel_all([following])
        await _register(settings, ghost.registry_key, None)
        await drop_sandbox(settings, tenant, real.name)
