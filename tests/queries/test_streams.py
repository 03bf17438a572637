"""Stream observations, appended to the log, are read back through the gateway in log order."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from ams.settings import Settings
from commands.envelope import STREAM_APPEND, Event, now_ms, uuid7
from commands.log import EventLog
from tests.conftest import token_for

pytestmark = pytest.mark.stack


@pytest.fixture
async def event_log(settings: Settings) -> AsyncIterator[EventLog]:
    log = EventLog(settings.kafka, settings.events_topic, transactional_id=f"test-{uuid.uuid4()}")
    await log.start()
    yield log
    await log.stop()


async def observe(event_log: EventLog, tenant: str, stream: str, data: object) -> str:
    event = Event(STREAM_APPEND, tenant, stream, data, id=uuid7(), ts=now_ms(), actor="sensor-7")
    return str(await event_log.append(event))


async def test_a_stream_reads_back_in_order_page_by_page(
    event_log: EventLog, api: httpx.AsyncClient, tenant: str
) -> None:
    positions = [await observe(event_log, tenant, "sensors/temp", {"reading": index}) for index in range(7)]
    await observe(event_log, tenant, "sensors/other", {"reading": -1})
    first = await api.get("/v1/streams/sensors/temp", params={"limit": 3},
                          headers={"X-AMS-Min-Position": positions[-1]})
    assert first.status_code == 200, first.text
    entries, following = first.json()["entries"], first.json()["next"]
    while True:
        page = (await api.get("/v1/streams/sensors/temp", params={"limit": 3, "after": following})).json()
        entries += page["entries"]
        if not page["entries"]:
            assert page["next"] == following  # an empty page keeps the cursor, so a reader can poll with it
            break
        following = page["next"]
    assert [entry["data"] for entry in entries] == [{"reading": index} for index in range(7)]
    assert [entry["position"] for entry in entries] == positions
    assert {entry["actor"] for entry in entries} == {"sensor-7"}


async def test_streams_are_tenant_scoped(
    settings: Settings, event_log: EventLog, api: httpx.AsyncClient, tenant: str
) -> None:
    position = await observe(event_log, "stream-neighbour", "sensors/temp", {"theirs": True})
    mine = await api.get("/v1/streams/sensors/temp", headers={"X-AMS-Min-Position": position})
    assert mine.json()["entries"] == []
    theirs = {"Authorization": f"Bearer {token_for(settings, 'stream-neighbour')}"}
    assert (await api.get("/v1/streams/sensors/temp", headers=theirs)).json()["entries"][-1]["data"] == {"theirs": True}


@pytest.mark.parametrize("path, params, code", [
    ("/v1/streams/bad name", {}, "invalid_name"),
    ("/v1/streams/s", {"after": "x"}, "invalid_position"),
    ("/v1/streams/s", {"limit": "-1"}, "invalid_limit"),
])
async def test_bad_stream_reads_are_clear_400s(api: httpx.AsyncClient, path: str, params: dict[str, str],
                                               code: str) -> None:
    response = await api.get(path, params=params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == code
