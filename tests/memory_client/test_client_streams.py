"""End-to-end tests of reading a stream back through the client (`GET /v1/streams/{name}?after=&limit=`)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ams.settings import Settings
from memory_client import AsyncMemoryClient, MemoryClient
from tests.conftest import token_for

pytestmark = pytest.mark.stack


def mentions(item: Any, marker: str) -> bool:
    """Whether a stream item holds the observation tagged ``marker`` (bare or wrapped with its position)."""
    return marker in json.dumps(item)


def test_a_stream_reads_back_its_observations_in_order_a_page_at_a_time(settings: Settings, tenant: str) -> None:
    with MemoryClient(f"{settings.gateway_url}/v1", token_for(settings, tenant)) as memory:
        for step in range(5):
            memory.append("agent-7/steps", {"marker": f"step-{step}"}, wait=step % 2 == 0)
        first = memory.read_stream("agent-7/steps", limit=3)
        assert len(first.items) == 3
        assert all(mentions(item, f"step-{step}") for step, item in enumerate(first.items))
        assert first.next is not None
        rest = memory.read_stream("agent-7/steps", after=first.next, limit=3)
        assert len(rest.items) == 2
        assert all(mentions(item, f"step-{step}") for step, item in enumerate(rest.items, start=3))


async def test_the_async_client_reads_a_stream_it_just_appended_to(settings: Settings, tenant: str) -> None:
    async with AsyncMemoryClient(f"{settings.gateway_url}/v1", token_for(settings, tenant)) as memory:
        await memory.append("audit", {"marker": "only"}, wait=False)
        page = await memory.read_stream("audit")
        assert len(page.items) == 1 and mentions(page.items[0], "only")
