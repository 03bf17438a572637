"""Time travel (as_of a position or a time) returns the fold of exactly that prefix of the log."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
import pytest

from ams.settings import Settings
from commands.envelope import DELETE, Event, encode, now_ms, uuid7
from commands.fold import visible
from commands.keys import format_positions, kafka_key, partition_for
from tests.conftest import token_for
from tests.support import Logged, kv_events_by_key, produce_raw, state_after

pytestmark = pytest.mark.stack


def rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


async def delete_in_log(settings: Settings, tenant: str, key: str) -> str:
    """A kv.delete, produced straight into the log (as another tool would)."""
    event = Event(DELETE, tenant, key, id=uuid7(), ts=now_ms(), actor="cleanup-tool")
    partition, offset = await produce_raw(settings, encode(event), key=kafka_key(tenant, key),
                                          partition=partition_for(kafka_key(tenant, key), settings.partitions))
    return f"{partition}:{offset}"


def token_of(positions: list[str]) -> str:
    newest: dict[int, int] = {}
    for position in positions:
        partition, offset = map(int, position.split(":"))
        newest[partition] = max(offset, newest.get(partition, -1))
    return format_positions(newest)


async def write_steps(settings: Settings, api: httpx.AsyncClient, tenant: str) -> str:
    """Keys under ``plan/`` changing over a few steps, one deleted and re-created; a token covering it all."""
    positions = []
    for step in range(4):
        for name in ("a", "b", "c"):
            written = await api.put(f"/v1/kv/plan/{name}", json={"step": step, "key": name})
            positions.append(written.json()["position"])
        if step == 1:
            positions.append(await delete_in_log(settings, tenant, "plan/b"))
        positions.append((await api.put("/v1/kv/elsewhere", json=step)).json()["position"])
        await asyncio.sleep(0.01)
    return token_of(positions)


async def write_with_a_condition_lost(api: httpx.AsyncClient) -> str:
    written = await api.put("/v1/kv/plan/d", json="first")
    await api.put("/v1/kv/plan/d", json="second")
    lost = await api.put("/v1/kv/plan/d", json="never", headers={"If-Match": f'"{written.json()["version"]}"'})
    assert lost.status_code == 409
    return str((await api.put("/v1/kv/plan/e", json="last")).json()["position"])


async def test_a_key_as_of_each_of_its_positions(settings: Settings, api: httpx.AsyncClient, tenant: str) -> None:
    lost = await write_with_a_condition_lost(api)
    last = await write_steps(settings, api, tenant)
    by_key = await kv_events_by_key(settings, tenant)
    await api.get("/v1/kv/plan/e/history", headers={"X-AMS-Min-Position": token_of([lost, *last.split(",")])})
    for key in ("plan/a", "plan/b", "plan/d"):
        for logged in by_key[key]:
            def included(event: Logged, through: int = logged.offset) -> bool:
                return event.offset <= through

            expected = visible(state_after(by_key[key], included), logged.event.ts)
            response = await api.get(f"/v1/kv/{key}", params={"as_of": logged.position})
            if expected is None:
                assert response.status_code == 404, (key, logged.position, response.text)
                continue
            assert response.status_code == 200, (key, logged.position, response.text)
            assert response.json() == expected.value, (key, logged.position)
            assert response.headers["ETag"] == f'"{expected.version}"'


async def test_a_prefix_as_of_positions_and_times_is_the_fold(
    settings: Settings, api: httpx.AsyncClient, tenant: str
) -> None:
    last = await write_steps(settings, api, tenant)
    await api.get("/v1/kv/plan/a/history", headers={"X-AMS-Min-Position": last})
    by_key = {key: events for key, events in (await kv_events_by_key(settings, tenant)).items()
              if key.startswith("plan/")}
    everything = sorted((logged for events in by_key.values() for logged in events),
                        key=lambda logged: logged.event.ts)
    for moment in everything[::2]:
        cut: dict[int, int] = {}
        for logged in everything:
            if logged.event.ts <= moment.event.ts:
                cut[logged.partition] = max(cut.get(logged.partition, -1), logged.offset)
        by_position = await api.get("/v1/kv", params={"prefix": "plan/", "as_of": format_positions(cut)})
        by_time = await api.get("/v1/kv", params={"prefix": "plan/", "as_of": rfc3339(moment.event.ts)})
        for response, included in (
            (by_position, lambda logged, cut=cut: logged.offset <= cut.get(logged.partition, -1)),
            (by_time, lambda logged, moment=moment: logged.event.ts <= moment.event.ts),
        ):
            assert response.status_code == 200, response.text
            expected = {}
            for key, events in sorted(by_key.items()):
                record = visible(state_after(events, included), moment.event.ts)
                if record is not None:
                    expected[key] = (record.value, record.version)
            got = {item["key"]: (item["value"], item["version"]) for item in response.json()["items"]}
            assert got == expected, moment.position


async def test_listing_as_of_pages_by_key(api: httpx.AsyncClient) -> None:
    for index in range(7):
        last = (await api.put(f"/v1/kv/page/{index}", json=index)).json()["position"]
    await api.get("/v1/kv/page/0/history", headers={"X-AMS-Min-Position": last})
    as_of = rfc3339(int(datetime.now(UTC).timestamp() * 1000) + 60_000)
    keys, cursor = [], None
    while True:
        params: dict[str, str | int] = {"prefix": "page/", "as_of": as_of, "limit": 3,
                                        **({"cursor": cursor} if cursor else {})}
        body = (await api.get("/v1/kv", params=params)).json()
        keys += [item["key"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert keys == [f"page/{index}" for index in range(7)]


async def test_a_ttl_is_judged_at_the_time_travelled_to(api: httpx.AsyncClient) -> None:
    short = await api.put("/v1/kv/ttl/short", json="soon gone", params={"ttl": "0.5"})
    await asyncio.sleep(0.8)
    later = await api.put("/v1/kv/ttl/later", json="here")
    await api.get("/v1/kv/ttl/later/history", headers={"X-AMS-Min-Position": later.json()["position"]})
    short_partition = short.json()["position"].split(":")[0]
    later_partition, later_offset = later.json()["position"].split(":")
    assert (await api.get("/v1/kv/ttl/short", params={"as_of": short.json()["position"]})).json() == "soon gone"
    both = {int(short_partition): int(short.json()["position"].split(":")[1]), int(later_partition): int(later_offset)}
    listed = (await api.get("/v1/kv", params={"prefix": "ttl/", "as_of": format_positions(both)})).json()
    assert [item["key"] for item in listed["items"]] == ["ttl/later"]


async def test_as_of_a_position_of_another_partition_says_so(api: httpx.AsyncClient, settings: Settings) -> None:
    written = (await api.put("/v1/kv/here", json=1)).json()["position"]
    partition = int(written.split(":")[0])
    other = (partition + 1) % settings.partitions
    response = await api.get("/v1/kv/here", params={"as_of": f"{other}:0"})
    assert response.status_code == 404
    assert f"lives in partition {partition}" in response.json()["error"]["message"]


async def test_time_travel_is_tenant_scoped(settings: Settings, api: httpx.AsyncClient) -> None:
    written = (await api.put("/v1/kv/private/x", json="mine")).json()["position"]
    other = {"Authorization": f"Bearer {token_for(settings, 'another-tenant')}"}
    single = await api.get("/v1/kv/private/x", params={"as_of": written}, headers=other)
    assert single.status_code == 404
    listed = await api.get("/v1/kv", params={"prefix": "private/", "as_of": written}, headers=other)
    assert listed.json()["items"] == []


@pytest.mark.parametrize("as_of", ["yesterday", "2025-01-31", "2025-01-31T12:00:00", "1:x", "99:1", ""])
async def test_bad_as_of_is_a_clear_400(api: httpx.AsyncClient, as_of: str) -> None:
    for path in ("/v1/kv/some-key", "/v1/kv"):
        response = await api.get(path, params={"as_of": as_of})
        assert response.status_code == 400, (path, as_of, response.text)
        assert response.json()["error"]["code"] in ("invalid_as_of", "invalid_position")
