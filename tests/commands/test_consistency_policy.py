"""A tenant's policy makes key prefixes eventual; a second gateway runs with that policy."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from ams.settings import Settings
from commands.consistency import default_class, parse_policy
from tests.support import extra_gateway

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
    async with extra_gateway(settings, tenant, {"AMS_CONSISTENCY_POLICY": json.dumps(POLICY)}) as client:
        yield client


async def test_policy_prefixes_answer_202_and_others_stay_strong(policy_gateway: httpx.AsyncClient) -> None:
    fact = await policy_gateway.put("/v1/kv/fact:sky", json="blue")
    assert fact.status_code == 202
    session = await policy_gateway.put("/v1/kv/session:1", json={"step": 1})
    assert session.status_code == 200
    assert session.json()["status"] == "accepted"
    read = await policy_gateway.get("/v1/kv/fact:sky", headers={"X-AMS-Min-Position": fact.headers["X-AMS-Position"]})
    assert read.json() == "blue"
