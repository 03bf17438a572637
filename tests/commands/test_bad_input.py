"""Every bad input gets a 4xx with a JSON body that says what was wrong, and appends nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from ams.settings import Settings
from tests.conftest import token_for

pytestmark = pytest.mark.stack

BIG = b'"' + b"x" * (1 << 20) + b'"'

CASES = [
    ("malformed JSON", "PUT", "/v1/kv/k", {"content": b'{"a": '}, {}, 400, "malformed_json"),
    ("empty body", "PUT", "/v1/kv/k", {"content": b""}, {}, 400, "empty_body"),
    ("value over 1 MiB", "PUT", "/v1/kv/k", {"content": BIG}, {}, 413, "value_too_large"),
    ("body over the request limit", "PUT", "/v1/kv/k", {"content": b"[" + b"1," * (3 << 20) + b"1]"}, {}, 413,
     "body_too_large"),
    ("bad key characters", "PUT", "/v1/kv/bad%20key", {"json": 1}, {}, 400, "invalid_name"),
    ("dot-dot key segment", "PUT", "/v1/kv/a/%2E%2E/b", {"json": 1}, {}, 400, "invalid_name"),
    ("key too long", "PUT", "/v1/kv/" + "k" * 513, {"json": 1}, {}, 400, "invalid_name"),
    ("negative ttl", "PUT", "/v1/kv/k?ttl=-1", {"json": 1}, {}, 400, "invalid_ttl"),
    ("ttl not a number", "PUT", "/v1/kv/k?ttl=soon", {"json": 1}, {}, 400, "invalid_ttl"),
    ("If-Match not a version", "PUT", "/v1/kv/k", {"json": 1}, {"If-Match": "abc"}, 400, "invalid_header"),
    ("If-None-Match other than *", "PUT", "/v1/kv/k", {"json": 1}, {"If-None-Match": '"3"'}, 400, "invalid_header"),
    ("empty Idempotency-Key", "PUT", "/v1/kv/k", {"json": 1}, {"Idempotency-Key": ""}, 400, "invalid_header"),
    ("patch of an array", "PATCH", "/v1/kv/k", {"content": b"[1]"},
     {"Content-Type": "application/merge-patch+json"}, 422, "invalid_patch"),
    ("patch as text", "PATCH", "/v1/kv/k", {"content": b"{}"}, {"Content-Type": "text/plain"}, 415,
     "unsupported_media_type"),
    ("batch without operations", "POST", "/v1/batch", {"json": {"ops": []}}, {}, 422, "invalid_batch"),
    ("batch with an unknown op", "POST", "/v1/batch", {"json": {"operations": [{"op": "put", "key": "a", "value": 1},
                                                                               {"op": "explode", "key": "b"}]}},
     {}, 422, "invalid_batch"),
    ("batch with a bad key", "POST", "/v1/batch", {"json": {"operations": [{"op": "put", "key": "a b", "value": 1}]}},
     {}, 400, "invalid_name"),
    ("batch too large", "POST", "/v1/batch",
     {"json": {"operations": [{"op": "delete", "key": f"k{i}"} for i in range(501)]}}, {}, 413, "batch_too_large"),
    ("stream with a bad name", "POST", "/v1/streams/a%7Cb", {"json": 1}, {}, 400, "invalid_name"),
    ("bad consistency token", "GET", "/v1/kv/k", {}, {"X-AMS-Min-Position": "soon"}, 400, "invalid_position"),
    ("token naming a partition that does not exist", "GET", "/v1/kv/k", {}, {"X-AMS-Min-Position": "999:1"}, 400,
     "invalid_position"),
    ("bad listing limit", "GET", "/v1/kv?limit=0", {}, {}, 400, "invalid_limit"),
    ("forged listing cursor", "GET", "/v1/kv?cursor=%%%", {}, {}, 400, "invalid_cursor"),
    ("missing token", "PUT", "/v1/kv/k", {"json": 1}, {"Authorization": ""}, 401, "unauthorized"),
    ("garbage token", "PUT", "/v1/kv/k", {"json": 1}, {"Authorization": "Bearer abc.def.ghi"}, 401, "unauthorized"),
    ("not a bearer token", "GET", "/v1/kv/k", {}, {"Authorization": "Basic dXNlcjpwYXNz"}, 401, "unauthorized"),
]


@pytest.fixture
async def log_heads(api: httpx.AsyncClient) -> AsyncIterator[dict[str, int]]:
    yield (await api.get("/v1/positions")).json()["log"]


@pytest.mark.parametrize(("what", "method", "path", "body", "headers", "status", "code"), CASES,
                         ids=[case[0] for case in CASES])
async def test_bad_input_gets_a_clear_4xx_and_appends_nothing(
    api: httpx.AsyncClient, log_heads: dict[str, int], what: str, method: str, path: str,
    body: dict[str, object], headers: dict[str, str], status: int, code: str
) -> None:
    response = await api.request(method, path, headers=headers, **body)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert len(error["message"]) > 10
    assert (await api.get("/v1/positions")).json()["log"] == log_heads


async def test_a_token_without_the_write_scope_gets_403_and_appends_nothing(
    settings: Settings, tenant: str, api: httpx.AsyncClient, log_heads: dict[str, int]
) -> None:
    read_only = {"Authorization": f"Bearer {token_for(settings, tenant, 'memory:read')}"}
    response = await api.put("/v1/kv/k", json=1, headers=read_only)
    assert response.status_code == 403
    assert "memory:write" in response.json()["error"]["message"]
    assert (await api.get("/v1/positions")).json()["log"] == log_heads
