"""The audit feed: the tenant's events in log order with actor and outcome, for admins only."""

from __future__ import annotations

import uuid

import httpx
import pytest

from ams.settings import Settings
from commands.envelope import STREAM_APPEND, Event, now_ms, uuid7
from commands.log import EventLog
from tests.conftest import token_for
from tests.support import in_log_order, kv_events_by_key

pytestmark = pytest.mark.stack


def admin(settings: Settings, tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(settings, tenant, 'memory:admin')}"}


async def write_events(settings: Settings, api: httpx.AsyncClient, tenant: str) -> str:
    for index in range(12):
        await api.put(f"/v1/kv/job/{index % 4}", json={"run": index})
    written = await api.put("/v1/kv/job/0", json="stale", headers={"If-Match": '"0"'})
    assert written.status_code == 409
    log = EventLog(settings.kafka, settings.events_topic, transactional_id=f"test-{uuid.uuid4()}")
    await log.start()
    try:
        observed = await log.append(Event(STREAM_APPEND, tenant, "job/log", {"line": 1}, id=uuid7(), ts=now_ms(),
                                          actor="runner"))
    finally:
        await log.stop()
    return str(observed)


async def test_the_feed_pages_through_every_event_once_in_log_order(
    settings: Settings, api: httpx.AsyncClient, tenant: str
) -> None:
    last = await write_events(settings, api, tenant)
    headers = admin(settings, tenant)
    await api.get("/v1/events", headers={**headers, "X-AMS-Min-Position": last})
    seen, after = [], None
    while True:
        params = {"limit": 4, **({"after": after} if after else {})}
        page = (await api.get("/v1/events", params=params, headers=headers)).json()
        if not page["events"]:
            assert page["next"] == (after or "")
            break
        seen += page["events"]
        after = page["next"]
    logged = {logged.position: logged for events in (await kv_events_by_key(settings, tenant)).values()
              for logged in events}
    kv_seen = [event for event in seen if event["type"] != STREAM_APPEND]
    assert sorted(event["position"] for event in kv_seen) == sorted(logged)
    assert len({event["position"] for event in seen}) == len(seen) == len(logged) + 1
    assert in_log_order([event["position"] for event in seen])
    assert [event["outcome"]["status"] for event in seen].count("rejected") == 1
    assert {event["actor"] for event in kv_seen} == {"dev"}
    assert seen[-1]["type"] == STREAM_APPEND and seen[-1]["actor"] == "runner"


async def test_the_feed_filters_by_type_and_key_prefix(settings: Settings, api: httpx.AsyncClient, tenant: str) -> None:
    last = await write_events(settings, api, tenant)
    headers = {**admin(settings, tenant), "X-AMS-Min-Position": last}
    streams = (await api.get("/v1/events", params={"type": STREAM_APPEND}, headers=headers)).json()["events"]
    assert [event["key"] for event in streams] == ["job/log"]
    one_key = (await api.get("/v1/events", params={"key_prefix": "job/1"}, headers=headers)).json()["events"]
    assert {event["key"] for event in one_key} == {"job/1"} and len(one_key) == 3


async def test_the_feed_needs_the_admin_scope_and_is_tenant_scoped(
    settings: Settings, api: httpx.AsyncClient, tenant: str
) -> None:
    assert (await api.get("/v1/events")).status_code == 403
    last = await write_events(settings, api, tenant)
    other = {**admin(settings, "feed-neighbour"), "X-AMS-Min-Position": last}
    assert all(event["key"] != "job/log" for event in (await api.get("/v1/events", headers=other)).json()["events"])


@pytest.mark.parametrize("params, code", [
    ({"type": "kv.explode"}, "invalid_type"),
    ({"after": "0:x"}, "invalid_position"),
    ({"key_prefix": "a b"}, "invalid_name"),
])
async def test_bad_feed_parameters_are_clear_400s(
    settings: Settings, api: httpx.AsyncClient, tenant: str, params: dict[str, str], code: str
) -> None:
    response = await api.get("/v1/events", params=params, headers=admin(settings, tenant))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == code
