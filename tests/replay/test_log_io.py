"""`ams log export` / `ams log import` through the real log."""

from __future__ import annotations

import io
import uuid

import httpx
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ams.settings import Settings
from replay.cut import Cut, parse_cut
from replay.log_io import Selection, export_log, import_log
from tests.support import read_topic

pytestmark = pytest.mark.stack


async def exported(settings: Settings, selection: Selection, topic: str | None = None) -> list[dict]:  # type: ignore[type-arg]
    out = io.BytesIO()
    await export_log(settings, out, selection, topic)
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


async def test_export_keeps_the_tenants_events_up_to_a_position(api: httpx.AsyncClient, settings: Settings,
                                                                tenant: str) -> None:
    await api.put("/v1/kv/notes/a", json=1)
    middle = await api.put("/v1/kv/notes/a", json=2)
    await api.put("/v1/kv/notes/a", json=3)
    await api.put("/v1/kv/other", json=4)
    lines = await exported(settings, Selection(tenant, "notes/", parse_cut(middle.headers["X-AMS-Position"])))
    assert [line["event"]["data"] for line in lines] == [1, 2]
    assert all(line["event"]["tenant"] == tenant for line in lines)
    assert f'{lines[-1]["partition"]}:{lines[-1]["offset"]}' == middle.headers["X-AMS-Position"]


async def test_a_time_cut_keeps_what_was_written_before_it(api: httpx.AsyncClient, settings: Settings,
                                                          tenant: str) -> None:
    first = await api.put("/v1/kv/k", json="before")
    lines = await exported(settings, Selection(tenant))
    cut_ms = lines[-1]["timestamp"]
    await api.put("/v1/kv/k", json="after")
    kept = await exported(settings, Selection(tenant, None, Cut({}, cut_ms)))
    assert [line["event"]["data"] for line in kept] == ["before"]
    assert first.status_code == 200


async def test_import_appends_the_slice_to_another_topic_in_order(api: httpx.AsyncClient, settings: Settings,
                                                                 tenant: str) -> None:
    for step in range(5):
        await api.put(f"/v1/kv/step/{step % 2}", json=step)
    lines = await exported(settings, Selection(tenant))
    topic = f"ams.test-import-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(**settings.kafka.client_options())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, settings.partitions, 1)])
    finally:
        await admin.close()
    count = await import_log(settings, [orjson.dumps(line) for line in lines], topic)
    assert count == 5
    copied = sorted(await read_topic(settings, topic), key=lambda record: (record.partition, record.offset))
    original = sorted(lines, key=lambda line: (line["partition"], line["offset"]))
    assert [orjson.loads(record.value) for record in copied] == [line["event"] for line in original]
    assert [record.partition for record in copied] == [line["partition"] for line in original]
