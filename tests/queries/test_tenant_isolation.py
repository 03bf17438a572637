"""Tenant A's token never reaches tenant B's keys: not in reads, listings, conditions or error text."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from ams.settings import Settings
from tests.conftest import token_for

pytestmark = pytest.mark.stack


@pytest.fixture
async def other(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """Tenant B, with keys of its own."""
    tenant_b = f"t{uuid.uuid4().hex[:12]}"
    headers = {"Authorization": f"Bearer {token_for(settings, tenant_b)}"}
    async with httpx.AsyncClient(base_url=settings.gateway_url, headers=headers, timeout=30) as client:
        assert (await client.put("/v1/kv/secret", json={"pin": 1234})).status_code == 200
        assert (await client.put("/v1/kv/shared-name", json="B's")).status_code == 200
        yield client


async def test_another_tenants_key_is_not_there(api: httpx.AsyncClient, other: httpx.AsyncClient) -> None:
    theirs = await api.get("/v1/kv/secret")
    never = await api.get("/v1/kv/never-written-anywhere")
    assert theirs.status_code == never.status_code == 404
    assert theirs.json()["error"]["message"].replace("secret", "K") == never.json()["error"]["message"].replace(
        "never-written-anywhere", "K")


async def test_listings_show_only_the_callers_keys(api: httpx.AsyncClient, other: httpx.AsyncClient) -> None:
    await api.put("/v1/kv/mine", json=1)
    assert [item["key"] for item in (await api.get("/v1/kv")).json()["items"]] == ["mine"]
    for prefix in ("*", "%", "s*", "../", "|"):
        response = await api.get("/v1/kv", params={"prefix": prefix})
        assert response.status_code in (200, 400)
        assert response.status_code == 400 or response.json()["items"] == []


async def test_writes_never_touch_or_reveal_another_tenants_key(api: httpx.AsyncClient,
                                                              other: httpx.AsyncClient) -> None:
    their_version = (await other.get("/v1/kv/shared-name")).headers["ETag"]
    conditional = await api.put("/v1/kv/shared-name", json="A's", headers={"If-Match": their_version})
    assert conditional.status_code == 409
    assert "absent" in conditional.json()["error"]["message"]
    assert (await api.delete("/v1/kv/secret")).status_code == 200  # deletes A's (absent) key, not B's
    assert (await other.get("/v1/kv/secret")).json() == {"pin": 1234}
    assert (await other.get("/v1/kv/shared-name")).json() == "B's"
