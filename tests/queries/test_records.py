"""Records read many at a time: by keys, by prefix and value filter, and their distinct prefixes."""

from __future__ import annotations

import httpx
import pytest

from ams.settings import Settings
from tests.conftest import token_for

pytestmark = pytest.mark.stack


async def _put(api: httpx.AsyncClient, key: str, value: object, **params: int) -> str:
    written = await api.put(f"/v1/kv/{key}", json=value, params=params)
    assert written.status_code == 200, written.text
    return written.headers["X-AMS-Position"]


async def test_get_answers_each_key_in_order_with_its_metadata(api: httpx.AsyncClient) -> None:
    await _put(api, "a/1", {"n": 1})
    await _put(api, "a/2", {"n": 2}, ttl=3600)
    await _put(api, "a/1", {"n": 11})
    assert (await api.delete("/v1/kv/a/3")).status_code == 200
    found = await api.post("/v1/records/get", json={"keys": ["a/2", "missing", "a/1", "a/3"]})
    assert found.status_code == 200, found.text
    two, missing, one, deleted = found.json()["items"]
    assert missing is None and deleted is None
    assert two["value"] == {"n": 2} and two["expires"] is not None
    assert one["value"] == {"n": 11} and one["expires"] is None
    assert one["created"] < one["updated"] and one["key"] == "a/1"


async def test_search_filters_on_the_server_and_pages_in_key_order(api: httpx.AsyncClient) -> None:
    for n in range(12):
        await _put(api, f"s/{n:02d}", {"n": n, "kind": "even" if n % 2 == 0 else "odd", "meta": {"lang": "en"}})
    await _put(api, "t/00", {"n": 0, "kind": "even"})
    body = {"prefix": "s/", "filter": {"kind": "even", "n": {"gte": 4}, "meta.lang": "en"}, "limit": 2,
            "offset": 1}
    found = await api.post("/v1/records/search", json=body)
    assert found.status_code == 200, found.text
    assert [item["key"] for item in found.json()["items"]] == ["s/06", "s/08"]
    everything = await api.post("/v1/records/search", json={"prefix": "", "limit": 100})
    assert len(everything.json()["items"]) == 13


async def test_prefixes_are_distinct_live_and_paged(api: httpx.AsyncClient) -> None:
    for key in ("ns/a/:1", "ns/a/:2", "ns/a/b/:1", "ns/a-b/:1", "ns/c/:1", "ns/plain", "other/:1"):
        await _put(api, key, 1)
    assert (await api.delete("/v1/kv/ns/c/:1")).status_code == 200
    first = await api.post("/v1/records/prefixes", json={"prefix": "ns/", "delimiter": ":", "limit": 2})
    assert first.status_code == 200, first.text
    assert first.json() == {"prefixes": ["ns/a-b/", "ns/a/"], "next_after": "ns/a/"}
    rest = await api.post("/v1/records/prefixes", json={"prefix": "ns/", "delimiter": ":", "after": "ns/a/"})
    assert rest.json() == {"prefixes": ["ns/a/b/"], "next_after": None}


async def test_a_token_is_honoured(api: httpx.AsyncClient) -> None:
    position = await _put(api, "tok/1", 1)
    found = await api.post("/v1/records/get", json={"keys": ["tok/1"]}, headers={"X-AMS-Min-Position": position})
    assert found.json()["items"][0]["value"] == 1
    beyond = await api.post("/v1/records/get", json={"keys": ["tok/1"]},
                            headers={"X-AMS-Min-Position": "0:999999999"})
    assert beyond.status_code == 400 and beyond.json()["error"]["code"] == "position_beyond_log"


async def test_another_tenants_records_are_absent(api: httpx.AsyncClient, settings: Settings) -> None:
    await _put(api, "secret/:1", {"kind": "x"})
    headers = {"Authorization": f"Bearer {token_for(settings, 'intruder')}"}
    async with httpx.AsyncClient(base_url=settings.gateway_url, headers=headers, timeout=30) as other:
        assert (await other.post("/v1/records/get", json={"keys": ["secret/:1"]})).json() == {"items": [None]}
        assert (await other.post("/v1/records/search", json={"prefix": "secret/"})).json() == {"items": []}
        listed = await other.post("/v1/records/prefixes", json={"prefix": "secret/", "delimiter": ":"})
        assert listed.json()["prefixes"] == []


@pytest.mark.parametrize(("path", "body", "code"), [
    ("/v1/records/get", {"keys": []}, "invalid_keys"),
    ("/v1/records/get", {"keys": ["bad key"]}, "invalid_name"),
    ("/v1/records/get", {"keys": ["a"], "extra": 1}, "invalid_body"),
    ("/v1/records/get", [1], "invalid_body"),
    ("/v1/records/search", {"filter": {"a b": 1}}, "invalid_filter"),
    ("/v1/records/search", {"filter": {"n": {"$near": 1}}}, "invalid_filter"),  # an unknown operator
    ("/v1/records/search", {"limit": 0}, "invalid_limit"),
    ("/v1/records/search", {"offset": -1}, "invalid_offset"),
    ("/v1/records/search", {"prefix": "a b"}, "invalid_name"),
    ("/v1/records/prefixes", {"prefix": "a/"}, "invalid_delimiter"),
    ("/v1/records/prefixes", {"delimiter": "|"}, "invalid_delimiter"),
    ("/v1/records/prefixes", {"prefix": "a/", "delimiter": ":", "after": "b/"}, "invalid_after"),
])
async def test_bad_input_is_a_400_that_says_why(api: httpx.AsyncClient, path: str, body: object, code: str) -> None:
    answer = await api.post(path, json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == code


@pytest.mark.parametrize("path", ["/v1/records/get", "/v1/records/search", "/v1/records/prefixes"])
async def test_a_sandbox_the_tenant_lacks_is_a_404(api: httpx.AsyncClient, path: str) -> None:
    body = {"keys": ["a"]} if path.endswith("get") else {"delimiter": ":"}
    answer = await api.post(path, json=body, headers={"X-AMS-Sandbox": "nosuch"})
    assert answer.status_code == 404, answer.text
    assert answer.json()["error"]["code"] == "no_sandbox"
