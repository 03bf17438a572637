"""A key's history, read through the gateway from PostgreSQL, is exactly what a fold of the log says."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from ams.settings import Settings
from tests.conftest import token_for
from tests.support import fold_history, kv_events_by_key

pytestmark = pytest.mark.stack


async def write_a_varied_history(api: httpx.AsyncClient) -> str:
    """Puts, a patch, a lost condition, a retry, a delete and a re-create; returns the last position."""
    first = await api.put("/v1/kv/doc", json={"title": "draft", "tags": ["a"]}, headers={"Idempotency-Key": "c1"})
    assert first.status_code == 200, first.text
    version = first.json()["version"]
    assert (await api.put("/v1/kv/doc", json={"title": "v2"}, headers={"If-Match": f'"{version}"'})).status_code == 200
    lost = await api.put("/v1/kv/doc", json={"title": "stale"}, headers={"If-Match": f'"{version}"'})
    assert lost.status_code == 409, lost.text
    retry = await api.put("/v1/kv/doc", json={"title": "draft", "tags": ["a"]}, headers={"Idempotency-Key": "c1"})
    assert retry.json()["status"] == "duplicate", retry.text
    await api.put("/v1/kv/other", json=1)
    for step in range(3):
        await api.put("/v1/kv/doc", json={"title": f"v{3 + step}"})
    return str((await api.put("/v1/kv/doc", json={"title": "final"})).json()["position"])


def expected_entries(history: list[Any]) -> list[dict[str, Any]]:
    entries = []
    for logged, outcome in history:
        record = outcome.record
        entries.append({
            "position": logged.position,
            "type": logged.event.type,
            "actor": logged.event.actor,
            "data": logged.event.data,
            "outcome": {"status": outcome.status.value, "reason": outcome.reason, "version": outcome.version},
            "state": {
                "version": record.version if record else None,
                "value": record.value if record and not record.deleted else None,
                "deleted": bool(record and record.deleted),
                "expires_at": record.expires_at if record else None,
            },
        })
    return entries


def comparable(entry: dict[str, Any]) -> dict[str, Any]:
    return {name: entry[name] for name in ("position", "type", "actor", "data", "outcome", "state")}


async def test_history_is_the_fold_of_the_log(settings: Settings, api: httpx.AsyncClient, tenant: str) -> None:
    last = await write_a_varied_history(api)
    response = await api.get("/v1/kv/doc/history", params={"order": "oldest"}, headers={"X-AMS-Min-Position": last})
    assert response.status_code == 200, response.text
    logged = (await kv_events_by_key(settings, tenant))["doc"]
    expected = expected_entries(fold_history(logged))
    assert [comparable(entry) for entry in response.json()["entries"]] == expected
    assert response.json()["next_cursor"] is None

    statuses = [entry["outcome"]["status"] for entry in response.json()["entries"]]
    assert statuses.count("rejected") == 1 and statuses.count("duplicate") == 1
    rejected = next(entry for entry in response.json()["entries"] if entry["outcome"]["status"] == "rejected")
    assert rejected["data"] == {"title": "stale"}
    assert rejected["outcome"]["reason"].startswith("key is at version")


async def test_history_pages_newest_first_and_oldest_first(api: httpx.AsyncClient) -> None:
    last = await write_a_varied_history(api)
    everything = (await api.get("/v1/kv/doc/history", params={"order": "oldest", "limit": 1000},
                                headers={"X-AMS-Min-Position": last})).json()["entries"]
    for order, expected in (("oldest", everything), ("newest", everything[::-1])):
        pages: list[dict[str, Any]] = []
        cursor = None
        while True:
            params: dict[str, str | int] = {"order": order, "limit": 3, **({"cursor": cursor} if cursor else {})}
            page = (await api.get("/v1/kv/doc/history", params=params)).json()
            pages += page["entries"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages == expected, order


async def test_values_in_history_are_exactly_as_written(api: httpx.AsyncClient) -> None:
    body = b'{"z":1,"a":[1.5,"\xc3\xa9",null]}'
    written = await api.put("/v1/kv/exact", content=body, headers={"Content-Type": "application/json"})
    raw = (await api.get("/v1/kv/exact/history", headers={"X-AMS-Min-Position": written.json()["position"]})).content
    assert b'"value":' + orjson.dumps(orjson.loads(body)) in raw


async def test_history_is_tenant_scoped(settings: Settings, api: httpx.AsyncClient) -> None:
    written = await api.put("/v1/kv/secret", json="mine")
    other = {"Authorization": f"Bearer {token_for(settings, 'someone-else')}",
             "X-AMS-Min-Position": written.json()["position"]}
    response = await api.get("/v1/kv/secret/history", headers=other)
    assert response.status_code == 200
    assert response.json()["entries"] == []


@pytest.mark.parametrize("params, code", [
    ({"order": "sideways"}, "invalid_order"),
    ({"limit": "0"}, "invalid_limit"),
    ({"limit": "1001"}, "invalid_limit"),
    ({"limit": "ten"}, "invalid_limit"),
    ({"cursor": "nonsense"}, "invalid_position"),
    ({"cursor": "0:1,1:2"}, "invalid_position"),
    ({"cursor": "99:1"}, "invalid_position"),
])
async def test_bad_history_parameters_are_clear_400s(api: httpx.AsyncClient, params: dict[str, str], code: str) -> None:
    response = await api.get("/v1/kv/doc/history", params=params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == code


async def test_positions_report_the_postgres_projection(api: httpx.AsyncClient) -> None:
    written = await api.put("/v1/kv/counted", json=1)
    await api.get("/v1/kv/counted/history", headers={"X-AMS-Min-Position": written.json()["position"]})
    body = (await api.get("/v1/positions")).json()
    partition, offset = map(int, written.json()["position"].split(":"))
    assert body["projections"]["postgres"][str(partition)]["applied"] >= offset
    assert set(body["projections"]["postgres"]) <= set(body["log"])
