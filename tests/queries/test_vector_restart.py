"""A gateway restart restores the FAISS view from its snapshot, then applies the log's tail."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from ams.settings import Settings
from commands.envelope import DELETE, PUT, Event, now_ms, uuid7
from compose.local import LocalStack
from projections.faiss_feed import index_params
from projections.faiss_files import snapshot_path
from projections.faiss_view import FaissView
from tests.vector_support import append_event, merge_tokens, put_all, search

pytestmark = pytest.mark.stack


async def restored_keys(settings: Settings) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{settings.gateway_url}/metrics")).text
    match = re.search(r"^ams_vector_view_restored_keys (\S+)$", text, re.M)
    assert match, "the gateway's /metrics has no ams_vector_view_restored_keys"
    return float(match.group(1))


async def test_a_restart_restores_the_snapshot_then_applies_the_log_tail(
    stack: LocalStack, settings: Settings, api: httpx.AsyncClient, tenant: str
) -> None:
    before = await put_all(api, {f"old/{n}": {"embedding": [1.0, n / 10], "n": n} for n in range(5)})
    await search(api, before, embedding=[1.0, 0.0], k=1)

    await asyncio.to_thread(stack.down, ["gateway"])  # every gateway process writes the snapshot as it stops
    snapshot = await asyncio.to_thread(FaissView.load, snapshot_path(settings), index_params(settings))
    assert set(snapshot.tenants[tenant].inventory(now_ms())) == {f"old/{n}" for n in range(5)}

    # While the gateway is down, the log moves on: one new vector, one deleted key (the tail).
    tail = [await append_event(settings, Event(PUT, tenant, "new", {"embedding": [0.0, 1.0]}, id=uuid7(),
                                               ts=now_ms())),
            await append_event(settings, Event(DELETE, tenant, "old/0", id=uuid7(), ts=now_ms()))]
    await asyncio.to_thread(stack.start, "gateway")

    assert await restored_keys(settings) >= 5
    found = await search(api, merge_tokens(before, *tail), embedding=[1.0, 0.0], k=10)
    assert {result["key"] for result in found} == {"old/1", "old/2", "old/3", "old/4", "new"}
    assert found[0]["key"] == "old/1"


async def test_the_milvus_view_survives_a_milvus_lite_restart(
    stack: LocalStack, settings: Settings, api: httpx.AsyncClient
) -> None:
    """The local stack's Milvus Lite (the default): it comes back with its collections released."""
    before = await put_all(api, {"kept": {"embedding": [1.0, 0.0]}})
    await search(api, before, embedding=[1.0, 0.0], k=1, backend="milvus")
    milvus = stack.component("milvus-lite")
    await asyncio.to_thread(stack.process(milvus.name).stop, signum=milvus.stop_signal)
    await asyncio.to_thread(stack.ensure, milvus)

    after = await put_all(api, {"added": {"embedding": [0.9, 0.1]}})
    found = await search(api, merge_tokens(before, after), embedding=[1.0, 0.0], k=5, backend="milvus")
    assert [result["key"] for result in found] == ["kept", "added"]
