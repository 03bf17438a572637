"""Writes through the gateway are read back through the gateway, from the hot projection."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.stack


async def test_a_value_put_through_the_gateway_is_read_back_exactly(api: httpx.AsyncClient) -> None:
    value = {"step": 3, "plan": ["search", "summarise"], "score": 0.25, "done": False, "note": None}
    written = await api.put("/v1/kv/session:1234", json=value)
    assert written.status_code == 200, written.text
    body = written.json()
    assert body["status"] == "accepted"
    assert written.headers["X-AMS-Position"] == body["position"]

    read = await api.get("/v1/kv/session:1234")
    assert read.status_code == 200
    assert read.json() == value
    assert read.headers["ETag"] == f'"{body["version"]}"'


async def test_an_absent_key_is_a_404_with_a_json_error(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/kv/never-written")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_the_newest_write_wins(api: httpx.AsyncClient) -> None:
    for step in range(5):
        assert (await api.put("/v1/kv/counter", json=step)).status_code == 200
    assert (await api.get("/v1/kv/counter")).json() == 4


async def test_unknown_routes_and_methods_answer_json_errors(api: httpx.AsyncClient) -> None:
    missing = await api.get("/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "no_route"
    wrong_method = await api.post("/v1/kv/k", json=1)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"
