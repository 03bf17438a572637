"""Resource limits: per-tenant rate limit, deep JSON, huge k and batches, oversized bodies.

(Too many watchers per tenant is covered in tests/queries/test_watch.py.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from ams.http import MAX_JSON_DEPTH
from ams.settings import Settings
from tests.conftest import token_for
from tests.support import extra_gateway

pytestmark = pytest.mark.stack


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code and error["message"]


async def test_a_tenant_over_its_rate_gets_429_with_retry_after_and_others_do_not(settings: Settings,
                                                                                   tenant: str) -> None:
    env = {"AMS_RATE_LIMIT_PER_SECOND": "5", "AMS_RATE_LIMIT_BURST": "10"}
    async with extra_gateway(settings, tenant, env) as client:
        answers = [await client.get("/v1/kv/k") for _ in range(15)]
        assert [a.status_code for a in answers[:10]] == [404] * 10
        limited = answers[-1]
        assert_error(limited, 429, "rate_limited")
        assert int(limited.headers["Retry-After"]) >= 1
        other = {"Authorization": f"Bearer {token_for(settings, tenant + 'b')}"}
        assert (await client.get("/v1/kv/k", headers=other)).status_code == 404  # a bucket per tenant
        await asyncio.sleep(1.2)  # refilled at 5 a second
        assert (await client.get("/v1/kv/k")).status_code == 404


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 300, 2000, 100_000])
async def test_deep_json_is_a_clear_400(api: httpx.AsyncClient, depth: int) -> None:
    deep = b"[" * depth + b"]" * depth
    for request in (api.put("/v1/kv/deep", content=deep), api.post("/v1/streams/deep", content=deep),
                    api.patch("/v1/kv/deep", content=b'{"a":' + deep + b"}",
                              headers={"Content-Type": "application/merge-patch+json"}),
                    api.post("/v1/batch", content=b'{"operations":[{"op":"put","key":"d","value":' + deep + b"}]}"),
                    api.post("/v1/vector/search", content=b'{"embedding":[1],"filter":{"a":' + deep + b"}}")):
        assert_error(await request, 400, "json_too_deep")
    assert (await api.get("/v1/kv/deep")).status_code == 404


async def test_json_at_the_depth_limit_is_kept_exactly(api: httpx.AsyncClient) -> None:
    value = 1
    for _ in range(MAX_JSON_DEPTH - 1):
        value = [value]  # type: ignore[assignment]
    assert (await api.put("/v1/kv/deep", content=orjson.dumps(value))).status_code == 200
    assert (await api.get("/v1/kv/deep")).content == orjson.dumps(value)


@pytest.mark.parametrize("k", [10**6, 2**63, 10**100, -1, 1.5])
async def test_huge_k_is_a_400(api: httpx.AsyncClient, k: object) -> None:
    assert_error(await api.post("/v1/vector/search", json={"embedding": [1.0, 0.0], "k": k}), 400, "invalid_k")


async def test_huge_batches_are_refused(api: httpx.AsyncClient, settings: Settings) -> None:
    many = {"operations": [{"op": "delete", "key": f"k{i}"} for i in range(100_000)]}
    assert_error(await api.post("/v1/batch", json=many), 413, "batch_too_large")
    big = {"operations": [{"op": "put", "key": f"k{i}", "value": "x" * 100_000} for i in range(60)]}
    assert_error(await api.post("/v1/batch", json=big), 413, "body_too_large")


async def test_an_oversized_chunked_body_is_refused_before_it_is_read_whole(api: httpx.AsyncClient,
                                                                             settings: Settings) -> None:
    async def fifty_megabytes() -> AsyncIterator[bytes]:
        chunk = b"x" * (1 << 20)
        for _ in range(50):
            yield chunk  # no Content-Length: the gateway counts the chunks as they come

    started = time.monotonic()
    response = await api.put("/v1/kv/big", content=fifty_megabytes())
    assert time.monotonic() - started < 10
    assert_error(response, 413, "body_too_large")
    assert str(settings.max_body_bytes) in response.json()["error"]["message"]
    assert (await api.get("/v1/kv/big")).status_code == 404
