"""The sandbox registry as its followers read it: the final state first, then each change.

These tests write to a registry of their own (another events topic name), so that no gateway or worker
of the stack tries to serve the made-up sandboxes in it.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import asdict, replace

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ams.settings import Settings
from replay.sandboxes import SandboxSpec, follow_registry, registry_topic

pytestmark = pytest.mark.stack


@pytest.fixture
async def own_registry(settings: Settings) -> Settings:
    mine = replace(settings, events_topic=f"registry-test-{uuid.uuid4().hex[:8]}")
    admin = AIOKafkaAdminClient(**settings.kafka.client_options())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(registry_topic(mine), 1, 1, topic_configs={"cleanup.policy": "compact"})])
    finally:
        await admin.close()
    return mine


async def write(settings: Settings, records: list[tuple[SandboxSpec, bool]]) -> None:
    """Register each spec (True) or drop it (False), in order."""
    producer = AIOKafkaProducer(**settings.kafka.client_options(), acks="all", linger_ms=5)
    await producer.start()
    try:
        for spec, created in records:
            await producer.send(registry_topic(settings), orjson.dumps(asdict(spec)) if created else None,
                                key=spec.registry_key)
        await producer.flush()
    finally:
        await producer.stop()


async def test_a_follower_starting_late_sees_the_final_state_never_a_sandbox_already_dropped(
    own_registry: Settings,
) -> None:
    # Over a megabyte of records: the catch-up takes several fetches, and a sandbox's creation and its
    # drop land in different ones.
    padding = "p" * 4000
    dropped = [SandboxSpec("t", f"gone-{n}", key_prefix=padding) for n in range(200)]
    kept = SandboxSpec("t", "kept", key_prefix=padding)
    again, renewed = SandboxSpec("t", "again", until="0:1"), SandboxSpec("t", "again", until="0:2")
    await write(own_registry, [*((spec, True) for spec in dropped), (kept, True), (again, True),
                               *((spec, False) for spec in dropped), (again, False), (renewed, True)])

    seen = [(key, spec) async for key, spec in follow_registry(own_registry, once=True)]

    specs = {key: spec for key, spec in seen if spec is not None}
    assert specs == {kept.registry_key: kept, again.registry_key: renewed}
    assert {key for key, spec in seen if spec is None} == {spec.registry_key for spec in [*dropped, again]}
    # The name created again: its drop comes before its new sandbox, for whoever served the old one.
    assert [spec for key, spec in seen if key == again.registry_key] == [None, renewed]


async def test_a_follower_caught_up_sees_each_change_as_it_comes(own_registry: Settings) -> None:
    before = SandboxSpec("t", "before")
    await write(own_registry, [(before, True)])
    seen: list[tuple[bytes, SandboxSpec | None]] = []
    registry = follow_registry(own_registry)
    try:
        async with asyncio.timeout(30):
            seen.append(await anext(registry))
            assert seen == [(before.registry_key, before)]
            after = SandboxSpec("t", "after")
            await write(own_registry, [(after, True)])
            seen.append(await anext(registry))
            await write(own_registry, [(before, False)])
            seen.append(await anext(registry))
    finally:
        await registry.aclose()
    assert seen[1:] == [(after.registry_key, after), (before.registry_key, None)]
