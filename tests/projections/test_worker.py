"""The Redis projection worker as a real process: restarts honour the checkpoint, poison is dead-lettered."""

from __future__ import annotations

import asyncio
import re
import signal

import httpx
import orjson
import pytest

from ams.settings import Settings
from commands.envelope import PUT, Event, encode, now_ms
from commands.keys import kafka_key, partition_for
from compose.local import LocalStack
from tests.support import fold_log_for, produce_raw, read_topic

pytestmark = pytest.mark.stack


async def applied_counter(settings: Settings) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{settings.projector_metrics_port}/metrics")).text
    match = re.search(r'^ams_projection_events_applied_total\{projection="redis"\} (\S+)$', text, re.M)
    assert match, f"the projector's /metrics has no applied-events counter:\n{text[:500]}"
    return float(match.group(1))


async def checkpoints(api: httpx.AsyncClient) -> dict[int, int]:
    redis = (await api.get("/v1/positions")).json()["projections"]["redis"]
    return {int(partition): entry["applied"] for partition, entry in redis.items()}


async def test_killing_the_projector_mid_stream_neither_loses_nor_doubles(
    stack: LocalStack, settings: Settings, api: httpx.AsyncClient, tenant: str
) -> None:
    process = stack.process("projector-redis")
    async def write(i: int) -> str:
        response = await api.put(f"/v1/kv/item-{i % 40}", json={"i": i}, headers={"Prefer": "respond-async"})
        assert response.status_code == 202, response.text
        return str(response.json()["position"])

    first = await asyncio.gather(*(write(i) for i in range(200)))
    process.send_signal(signal.SIGKILL)  # mid-stream: some of the writes are applied, some are not
    await asyncio.sleep(0.5)
    before = await checkpoints(api)
    second = await asyncio.gather(*(write(i) for i in range(200, 400)))
    await asyncio.to_thread(stack.ensure, stack.component("projector-redis"))

    token = ",".join(first + second)
    probe = await api.get("/v1/kv/item-0", headers={"X-AMS-Min-Position": token})
    assert probe.status_code == 200, probe.text
    expected = await fold_log_for(settings, tenant)
    assert len(expected) == 40
    for key, record in expected.items():
        # With the token: the writes were eventual, and the probe may have been served by PostgreSQL while the
        # restarted Redis projector was still catching up (a read without a token may then see Redis's older state).
        response = await api.get(f"/v1/kv/{key}", headers={"X-AMS-Min-Position": token})
        assert record is not None and response.json() == record.value, key
        assert response.headers["ETag"] == f'"{record.version}"'

    # Every event after the checkpoint the new worker resumed from was applied exactly once by it.
    after = await checkpoints(api)
    log = await read_topic(settings, settings.events_topic)
    owed = sum(1 for record in log if before.get(record.partition, -1) < record.offset <= after[record.partition])
    assert owed >= 200
    assert await applied_counter(settings) == owed


async def test_poison_records_go_to_the_dead_letter_topic_and_the_partition_keeps_moving(
    settings: Settings, api: httpx.AsyncClient, tenant: str
) -> None:
    partition = partition_for(kafka_key(tenant, "after-poison"), settings.partitions)
    bad_bytes = await produce_raw(settings, b"\x00\xffnot json", partition=partition)
    future_version = await produce_raw(settings, orjson.dumps({"v": 9, "type": PUT, "tenant": tenant, "key": "x"}),
                                       partition=partition)
    # A valid envelope whose value is over the value limit (compressed, any broker takes it).
    huge = Event(PUT, tenant, "after-poison", "x" * (settings.max_value_bytes + 1), ts=now_ms())
    oversized = await produce_raw(settings, encode(huge), partition=partition, compression="gzip")
    # JSON a reader in another language might let through: bad UTF-8 in a string, a number out of range.
    bad_utf8 = await produce_raw(settings, b'{"v":1,"type":"kv.put","tenant":"%s","key":"x","data":"\xb9"}'
                                 % tenant.encode(), partition=partition)
    out_of_range = await produce_raw(settings, b'{"v":1,"type":"kv.put","tenant":"%s","key":"x","data":1e400}'
                                     % tenant.encode(), partition=partition)
    legacy = b'{"op":"set","key":"session:1234","value":{"from":"console"}}'
    await produce_raw(settings, legacy, key=kafka_key(tenant, "session:1234"), headers=[("tenant", tenant.encode())])
    await produce_raw(settings, encode(Event(PUT, tenant, "after-poison", "ok", ts=now_ms())), partition=partition)

    async with asyncio.timeout(20):
        while (await api.get("/v1/kv/after-poison")).status_code != 200:
            await asyncio.sleep(0.1)
    assert (await api.get("/v1/kv/session:1234")).json() == {"from": "console"}

    letters = {}
    for record in await read_topic(settings, settings.dlq_topic):
        about = orjson.loads(dict(record.headers)["ams.dead_letter"])
        letters[(about["partition"], about["offset"])] = (about, record.value)
    assert letters[bad_bytes][0]["reason"].startswith("value is not JSON")
    assert letters[bad_bytes][1] == b"\x00\xffnot json"
    assert "unknown envelope version 9" in letters[future_version][0]["reason"]
    assert letters[future_version][0]["topic"] == settings.events_topic
    assert f"over the {settings.max_value_bytes}-byte limit" in letters[oversized][0]["reason"]
    assert letters[bad_utf8][0]["reason"].startswith("value is not JSON")
    assert letters[out_of_range][0]["reason"].startswith("value is not JSON")
    assert (await api.get("/v1/kv/after-poison")).json() == "ok"


async def test_a_projection_that_applied_everything_reports_no_lag_after_a_batch_transaction(
    api: httpx.AsyncClient
) -> None:
    """A batch ends its partitions with a transaction marker, which is not an event: the projection's
    checkpoint must still reach the end of the log, or it would report a lag of 1 for ever."""
    response = await api.post("/v1/batch", json={"operations": [
        {"op": "put", "key": f"marker/{i}", "value": i} for i in range(12)]})
    assert response.status_code == 200, response.text
    partitions = {int(token.split(":")[0]) for token in response.json()["positions"].split(",")}
    lags: dict[int, int] = {}
    async with asyncio.timeout(20):
        while True:
            redis = (await api.get("/v1/positions")).json()["projections"]["redis"]
            lags = {partition: redis[str(partition)]["lag"] for partition in partitions}
            if not any(lags.values()):
                break
            await asyncio.sleep(0.25)
    assert lags == dict.fromkeys(partitions, 0)
