"""Writes through the real gateway, Kafka and the Redis projection: the guarantees agents rely on."""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from ams.settings import Settings
from commands.envelope import PUT, Event, encode, now_ms
from commands.keys import kafka_key, partition_for

pytestmark = pytest.mark.stack


async def test_a_writer_that_reads_immediately_reads_its_own_write(api: httpx.AsyncClient) -> None:
    for step in range(30):
        assert (await api.put("/v1/kv/session:ryw", json={"step": step})).status_code == 200
        assert (await api.get("/v1/kv/session:ryw")).json() == {"step": step}


async def test_two_concurrent_conditional_writers_exactly_one_wins_and_both_learn(api: httpx.AsyncClient) -> None:
    version = (await api.put("/v1/kv/plan", json="draft")).json()["version"]
    first, second = await asyncio.gather(
        api.put("/v1/kv/plan", json="writer-1", headers={"If-Match": f'"{version}"'}),
        api.put("/v1/kv/plan", json="writer-2", headers={"If-Match": f'"{version}"'}),
    )
    assert sorted([first.status_code, second.status_code]) == [200, 409]
    winner, loser = (first, second) if first.status_code == 200 else (second, first)
    assert loser.json()["error"]["code"] == "conflict"
    assert f"required version {version}" in loser.json()["error"]["message"]
    assert (await api.get("/v1/kv/plan")).json() == ("writer-1" if winner is first else "writer-2")


async def test_create_only_and_conditional_delete(api: httpx.AsyncClient) -> None:
    assert (await api.put("/v1/kv/once", json=1, headers={"If-None-Match": "*"})).status_code == 200
    assert (await api.put("/v1/kv/once", json=2, headers={"If-None-Match": "*"})).status_code == 409
    version = int((await api.get("/v1/kv/once")).headers["ETag"].strip('"'))
    assert (await api.delete("/v1/kv/once", headers={"If-Match": str(version + 1)})).status_code == 409
    assert (await api.delete("/v1/kv/once", headers={"If-Match": str(version)})).status_code == 200
    assert (await api.get("/v1/kv/once")).status_code == 404


async def test_a_retried_command_with_the_same_idempotency_key_applies_once(api: httpx.AsyncClient) -> None:
    first = await api.put("/v1/kv/order", json="A", headers={"Idempotency-Key": "cmd-1"})
    assert (await api.put("/v1/kv/order", json="B")).status_code == 200
    retry = await api.put("/v1/kv/order", json="A", headers={"Idempotency-Key": "cmd-1"})
    assert retry.status_code == 200
    assert retry.json()["status"] == "duplicate"
    assert retry.json()["version"] == first.json()["version"]
    assert (await api.get("/v1/kv/order")).json() == "B"


async def test_patch_merges_and_keeps_the_rest(api: httpx.AsyncClient) -> None:
    await api.put("/v1/kv/profile", json={"name": "Ada", "prefs": {"seat": "window", "meal": "veg"}})
    patched = await api.patch("/v1/kv/profile", content=b'{"prefs": {"meal": null, "lang": "en"}}',
                              headers={"Content-Type": "application/merge-patch+json"})
    assert patched.status_code == 200, patched.text
    assert (await api.get("/v1/kv/profile")).json() == {"name": "Ada", "prefs": {"seat": "window", "lang": "en"}}


async def test_ttl_expires_the_key_for_readers_and_listings(api: httpx.AsyncClient) -> None:
    assert (await api.put("/v1/kv/ephemeral", json=1, params={"ttl": "1"})).status_code == 200
    assert (await api.get("/v1/kv/ephemeral")).status_code == 200
    assert [item["key"] for item in (await api.get("/v1/kv", params={"prefix": "ephemeral"})).json()["items"]] == [
        "ephemeral"]
    await asyncio.sleep(1.1)
    assert (await api.get("/v1/kv/ephemeral")).status_code == 404
    assert (await api.get("/v1/kv", params={"prefix": "ephemeral"})).json()["items"] == []


async def test_a_batch_is_applied_whole_and_answers_each_operation(api: httpx.AsyncClient) -> None:
    await api.put("/v1/kv/b/3", json="old")
    # b/1's version before the batch (a version is an offset: "0" itself would match a key first put at offset 0)
    before = (await api.put("/v1/kv/b/1", json=0)).json()["version"]
    response = await api.post("/v1/batch", json={"operations": [
        {"op": "put", "key": "b/1", "value": 1},
        {"op": "put", "key": "b/2", "value": {"x": 1}, "ttl": 60},
        {"op": "patch", "key": "b/2", "patch": {"y": 2}},
        {"op": "delete", "key": "b/3"},
        {"op": "put", "key": "b/1", "value": 9, "if_version": before},  # loses: the batch's first put moved b/1 on
    ]})
    assert response.status_code == 200, response.text
    statuses = [result["status"] for result in response.json()["results"]]
    assert statuses == ["accepted", "accepted", "accepted", "accepted", "rejected"]
    assert (await api.get("/v1/kv/b/1")).json() == 1
    assert (await api.get("/v1/kv/b/2")).json() == {"x": 1, "y": 2}
    assert (await api.get("/v1/kv/b/3")).status_code == 404


async def test_an_aborted_transaction_is_never_visible(api: httpx.AsyncClient, settings: Settings,
                                                       tenant: str) -> None:
    producer = AIOKafkaProducer(**settings.kafka.client_options(), transactional_id=f"test-{tenant}")
    await producer.start()
    try:
        await producer.begin_transaction()
        for key in ("aborted/1", "aborted/2", "aborted/3"):
            event = Event(PUT, tenant, key, "never", ts=now_ms())
            await producer.send_and_wait(settings.events_topic, encode(event), key=kafka_key(tenant, key))
        await producer.abort_transaction()
    finally:
        await producer.stop()
    # A committed write in each aborted key's partition, applied after the aborted records...
    for key in ("aborted/1", "aborted/2", "aborted/3"):
        partition = partition_for(kafka_key(tenant, key), settings.partitions)
        neighbour = next(f"after/{n}" for n in range(10_000)
                         if partition_for(kafka_key(tenant, f"after/{n}"), settings.partitions) == partition)
        assert (await api.put(f"/v1/kv/{neighbour}", json="ok")).status_code == 200
    for key in ("aborted/1", "aborted/2", "aborted/3"):  # ...and none of the aborted writes is visible
        assert (await api.get(f"/v1/kv/{key}")).status_code == 404


async def test_an_eventual_write_answers_202_and_a_token_read_sees_it(api: httpx.AsyncClient) -> None:
    written = await api.put("/v1/kv/fact:sky", json="blue", headers={"Prefer": "respond-async"})
    assert written.status_code == 202
    read = await api.get("/v1/kv/fact:sky", headers={"X-AMS-Min-Position": written.headers["X-AMS-Position"]})
    assert read.json() == "blue"


async def test_stream_appends_answer_with_their_position(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/streams/run-42", json={"step": 1, "tool": "search"})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "accepted"
    partition, offset = response.headers["X-AMS-Position"].split(":")
    assert int(partition) >= 0 and int(offset) >= 0


async def test_a_retried_stream_append_with_the_same_idempotency_key_applies_once(api: httpx.AsyncClient) -> None:
    first = await api.post("/v1/streams/run-43", json={"step": 1}, headers={"Idempotency-Key": "append-1"})
    assert first.status_code == 200, first.text
    assert (await api.post("/v1/streams/run-43", json={"step": 2})).status_code == 200
    retry = await api.post("/v1/streams/run-43", json={"step": 1}, headers={"Idempotency-Key": "append-1"})
    assert retry.status_code == 200, retry.text
    assert retry.json()["status"] == "duplicate"
    assert retry.json()["version"] == first.json()["version"] == int(first.json()["position"].split(":")[1])
    page = await api.get("/v1/streams/run-43", headers={"X-AMS-Min-Position": retry.json()["position"]})
    assert [entry["data"] for entry in page.json()["entries"]] == [{"step": 1}, {"step": 2}]


async def test_a_retry_after_more_than_32_other_writes_to_the_key_is_a_duplicate(api: httpx.AsyncClient) -> None:
    first = await api.put("/v1/kv/busy", json=0, headers={"Idempotency-Key": "early"})
    assert first.status_code == 200, first.text
    for n in range(1, 41):
        assert (await api.put("/v1/kv/busy", json=n, headers={"Idempotency-Key": f"w{n}"})).status_code == 200
    retry = await api.put("/v1/kv/busy", json=0, headers={"Idempotency-Key": "early"})
    assert retry.json()["status"] == "duplicate" and retry.json()["version"] == first.json()["version"]
    assert (await api.get("/v1/kv/busy")).json() == 40


async def test_listing_pages_through_a_prefix_in_key_order(api: httpx.AsyncClient) -> None:
    keys = [f"notes/{i:02d}" for i in range(25)]
    await api.post("/v1/batch", json={"operations": [{"op": "put", "key": key, "value": i}
                                                      for i, key in enumerate(keys)]})
    await api.put("/v1/kv/other", json=0)
    await api.delete("/v1/kv/notes/07")
    seen, cursor = [], None
    while True:
        params = {"prefix": "notes/", "limit": "10", **({"cursor": cursor} if cursor else {})}
        page = (await api.get("/v1/kv", params=params)).json()
        seen += [item["key"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [key for key in keys if key != "notes/07"]


async def test_positions_show_each_partitions_checkpoint_and_lag(api: httpx.AsyncClient, settings: Settings) -> None:
    await api.put("/v1/kv/anything", json=1)
    body = (await api.get("/v1/positions")).json()
    assert set(body["projections"]["redis"]) == {str(p) for p in range(settings.partitions)}
    assert all(entry["lag"] >= 0 for entry in body["projections"]["redis"].values())


async def test_a_read_waiting_for_a_position_never_reached_fails_clearly(api: httpx.AsyncClient) -> None:
    started = time.monotonic()
    response = await api.get("/v1/kv/anything", headers={"X-AMS-Min-Position": "0:999999999"})
    # Past the end of the log no wait can help: refused at once rather than timing out (504) later.
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "position_beyond_log"
    assert "0:999999999" in response.json()["error"]["message"]
    assert time.monotonic() - started < 2


async def test_a_value_as_large_as_the_limit_is_stored_and_read_back_whole(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    value = "x" * (settings.max_value_bytes - 2)  # with its quotes, exactly the limit
    written = await api.put("/v1/kv/large", content=orjson.dumps(value))
    assert written.status_code == 200, written.text
    read = await api.get("/v1/kv/large")
    assert read.status_code == 200 and read.json() == value
