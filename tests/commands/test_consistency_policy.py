"""A tenant's policy makes key prefixes eventual; a second gateway runs with that policy."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import httpx
import pytest

from ams.settings import Settings
from commands.consistency import default_class, parse_policy
from tests.conftest import token_for

pytestmark = pytest.mark.stack

POLICY = {"*": {"fact:": "eventual"}, "acme": {"fact:vip:": "strong"}}


def test_the_longest_matching_prefix_wins_and_a_tenants_own_entries_come_first() -> None:
    policy = parse_policy(POLICY)
    assert default_class(policy, "anyone", "fact:sky") == "eventual"
    assert default_class(policy, "anyone", "session:1") == "strong"
    assert default_class(policy, "acme", "fact:vip:1") == "strong"
    assert default_class(policy, "acme", "fact:other") == "eventual"
    with pytest.raises(ValueError, match="eventual"):
        parse_policy({"*": {"x": "sometimes"}})


@pytest.fixture
async def policy_gateway(settings: Settings, tenant: str) -> AsyncIterator[httpx.AsyncClient]:
    port = settings.gateway_port + 50
    env = {**os.environ, "AMS_CONSISTENCY_POLICY": json.dumps(POLICY), "AMS_GATEWAY_PORT": str(port)}
    process = subprocess.Popen([sys.executable, "-m", "ams.cli", "gateway"], env=env)
    headers = {"Authorization": f"Bearer {token_for(settings, tenant)}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30) as client:
        for _ in range(100):
            try:
                if (await client.get("/readyz")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
        yield client
    process.terminate()
    process.wait(timeout=10)


async def test_policy_prefixes_answer_202_and_others_stay_strong(policy_gateway: httpx.AsyncClient) -> None:
    fact = await policy_gateway.put("/v1/kv/fact:sky", json="blue")
    assert fact.status_code == 202
    session = await policy_gateway.put("/v1/kv/session:1", json={"step": 1})
    assert session.status_code == 200
    assert session.json()["status"] == "accepted"
    read = await policy_gateway.get("/v1/kv/fact:sky", headers={"X-AMS-Min-Position": fact.headers["X-AMS-Position"]})
    assert read.json() == "blue"
