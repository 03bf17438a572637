from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from ams import credentials
from ams.settings import get_settings
from commands.envelope import DELETE, PUT, STREAM_APPEND, Event, now_ms
from commands.fold import MAX_REMEMBERED_COMMANDS, Status
from commands.keys import kafka_key, partition_for
from projections.redis_kv import PART_RECORDS, GenerationBuilder, RedisBatchWriter, RedisSink
from projections.redis_layout import Announcement, RedisLayout
from projections.sink import Positioned, ProjectionSink
from tests.projections.sink_contract import SinkContract

pytestmark = pytest.mark.stack


class TestRedisSink(SinkContract):
    async def make_sink(self) -> ProjectionSink:
        settings = get_settings()
        # A namespace of its own: the contract's checkpoints never touch the live projection's.
        return RedisSink(settings.redis_url, RedisLayout(f"test-{uuid.uuid4().hex[:8]}"), settings.partitions)

    async def read(self, sink: ProjectionSink, tenant: str, key: str) -> dict[str, Any] | None:
        assert isinstance(sink, RedisBatchWriter)
        home = partition_for(kafka_key(tenant, key), sink.partitions)
        value, version, expires, deleted = await sink.client.hmget(
            sink.layout_of(home).record(home, tenant, key), ["value", "version", "expires", "deleted"])
        expiry = int(expires or 0)
        if value is None or deleted == b"1" or (expiry and expiry <= now_ms()):
            return None
        assert version is not None
        return {"value": orjson.loads(value), "version": int(version)}


class TestRedisSinkBuildingAGeneration(TestRedisSink):
    """A rebuild's sink (`GenerationBuilder`): it folds in memory and writes when flushed, under the same
    contract; a reader sees the generation once written."""

    async def make_sink(self) -> ProjectionSink:
        settings = get_settings()
        return GenerationBuilder(settings.redis_url, RedisLayout(f"test-{uuid.uuid4().hex[:8]}"), settings.partitions,
                                 1)

    async def read(self, sink: ProjectionSink, tenant: str, key: str) -> dict[str, Any] | None:
        assert isinstance(sink, GenerationBuilder)
        for partition in list(sink.unwritten):
            await sink.flush(partition)
        return await super().read(sink, tenant, key)


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[str]:
    """A real Redis replica of the stack's Redis, on a port of its own."""
    settings = get_settings()
    port = settings.redis_port + 100
    password = credentials.password(settings.secrets_dir, credentials.ADMIN)  # the stack's Redis wants a user
    auth = ["--masteruser", credentials.ADMIN, "--masterauth", password] if password else []
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--dir", str(tmp_path), "--replicaof", "127.0.0.1", str(settings.redis_port), *auth],
                               stdout=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port)
        for _ in range(200):
            with contextlib.suppress(redis.ConnectionError):
                if client.info("replication").get("master_link_status") == "up":
                    break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_with_wait_replicas_a_batch_is_on_the_replica_when_apply_returns(replica: str, tenant: str) -> None:
    settings = get_settings()
    sink = RedisSink(settings.redis_url, RedisLayout(f"test-{uuid.uuid4().hex[:8]}"), settings.partitions,
                     wait_replicas=1)
    await sink.apply(0, [Positioned(Event(PUT, tenant, "k", "v", ts=now_ms()), 0)], through=0, expected=-1)
    home = partition_for(kafka_key(tenant, "k"), settings.partitions)
    assert redis.Redis.from_url(replica).hget(sink.layout_of(home).record(home, tenant, "k"), "value") == b'"v"'
    await sink.close()


def one_partition_batch(sink: RedisBatchWriter, tenant: str, count: int) -> tuple[int, list[Positioned]]:
    """``count`` puts of distinct keys that all route to one partition (a rebuild's big window)."""
    keys = (f"big/{i}" for i in range(count * sink.partitions * 4))
    home = partition_for(kafka_key(tenant, "big/0"), sink.partitions)
    mine = [key for key in keys if partition_for(kafka_key(tenant, key), sink.partitions) == home][:count]
    assert len(mine) == count
    return home, [Positioned(Event(PUT, tenant, key, {"n": offset}, ts=now_ms()), offset, True)
                  for offset, key in enumerate(mine)]


async def test_a_rebuild_writes_a_big_batch_in_parts_and_all_of_it_lands(tenant: str) -> None:
    settings = get_settings()
    layout = RedisLayout(f"test-{uuid.uuid4().hex[:8]}")
    sink = GenerationBuilder(settings.redis_url, layout, settings.partitions, 1)
    try:
        await sink.checkpoints()
        home, events = one_partition_batch(sink, tenant, PART_RECORDS * 2 + 10)
        await sink.apply(home, events, len(events) - 1, -1)
        await sink.flush(home)
        again = GenerationBuilder(settings.redis_url, layout, settings.partitions, 1)
        assert (await again.checkpoints())[home] == len(events) - 1  # finished: nothing to start over
        built = await again.records(tenant)  # generation 1, the one being built
        assert {key: record.value for key, record in built.items()} == {e.event.key: e.event.data for e in events}
        assert await sink.client.zcard(layout.at(1).index(home, tenant)) == len(events)
        await again.close()
    finally:
        await sink.drop()
        await sink.close()


async def test_a_rebuild_interrupted_between_the_parts_of_a_batch_starts_that_partition_over(tenant: str) -> None:
    settings = get_settings()
    layout = RedisLayout(f"test-{uuid.uuid4().hex[:8]}")
    sink = GenerationBuilder(settings.redis_url, layout, settings.partitions, 1)
    try:
        await sink.checkpoints()
        home, events = one_partition_batch(sink, tenant, PART_RECORDS + 10)
        await sink.apply(home, events[:5], 4, -1)  # a first batch that completes
        await sink.flush(home)

        async def killed(**_: Any) -> None:
            raise ConnectionError("the rebuild died before the batch's last part")

        sink._script = killed  # type: ignore[assignment]
        await sink.apply(home, events[5:], len(events) - 1, 4)
        with pytest.raises(ConnectionError):
            await sink.flush(home)
        part = layout.at(1).partition_prefix(home)
        assert len([name async for name in sink.client.scan_iter(match=part + "*")]) > PART_RECORDS

        resumed = GenerationBuilder(settings.redis_url, layout, settings.partitions, 1)
        assert home not in await resumed.checkpoints()  # the partition holds records beyond its checkpoint
        assert [name async for name in sink.client.scan_iter(match=part + "*")] == []
        await resumed.close()
    finally:
        await sink.drop()
        await sink.close()


async def test_a_rebuild_writes_what_it_folded_when_flushed_and_remembers_it_meanwhile(tenant: str) -> None:
    """Batches of a rebuild are folded in memory until `flush`: Redis holds nothing of them before, the next
    batches fold over them (records and forgotten command ids alike), and each key is written once."""
    settings = get_settings()
    layout = RedisLayout(f"test-{uuid.uuid4().hex[:8]}")
    sink = GenerationBuilder(settings.redis_url, layout, settings.partitions, 1)
    try:
        await sink.checkpoints()
        home = partition_for(kafka_key(tenant, "k"), sink.partitions)
        ts = now_ms()
        puts = [Positioned(Event(PUT, tenant, "k", n, ts=ts + n, command_id=f"c{n}"), n, True)
                for n in range(MAX_REMEMBERED_COMMANDS + 1)]  # the record lets command c0 go
        await sink.apply(home, puts, len(puts) - 1, -1)
        assert await sink.client.get(layout.at(1).checkpoint(home)) is None
        assert await sink.client.exists(layout.at(1).record(home, tenant, "k")) == 0

        retried = Positioned(Event(PUT, tenant, "k", "again", ts=ts + 100, command_id="c0"), len(puts), True)
        [outcome] = await sink.apply(home, [retried], len(puts), len(puts) - 1)
        assert outcome is not None and outcome.status is Status.DUPLICATE
        await sink.flush(home)

        again = GenerationBuilder(settings.redis_url, layout, settings.partitions, 1)
        assert (await again.checkpoints())[home] == len(puts)
        assert (await again.records(tenant))["k"].value == MAX_REMEMBERED_COMMANDS
        assert await sink.client.hexists(layout.at(1).commands(home, tenant, "k"), "c0")
        await again.close()
    finally:
        await sink.drop()
        await sink.close()


async def test_each_batch_is_announced_with_the_keys_it_changed(tenant: str) -> None:
    settings = get_settings()
    layout = RedisLayout(f"test-{uuid.uuid4().hex[:8]}")
    live = RedisSink(settings.redis_url, layout, settings.partitions)
    rebuild = GenerationBuilder(settings.redis_url, layout, settings.partitions, 1)
    pubsub = live.client.pubsub()
    await pubsub.subscribe(layout.applied_channel)
    try:
        home, events = one_partition_batch(live, tenant, 3)
        stream = Positioned(Event(STREAM_APPEND, tenant, "s", {"n": 3}, ts=now_ms()), 3)  # not a key: not named
        await live.apply(home, [*events, stream], 3, -1)
        await live.apply(home, [Positioned(Event(DELETE, tenant, events[0].event.key, ts=now_ms()), 4, True)], 4, 3)
        await rebuild.checkpoints()
        await rebuild.apply(home, events, 2, -1)
        await rebuild.flush(home)
        heard: list[Announcement] = []
        deadline = time.monotonic() + 10
        while len(heard) < 3 and time.monotonic() < deadline:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)  # None: a confirmation
            if message is not None:
                heard.append(Announcement.parse(message["data"]))
        keys = [kafka_key(tenant, item.event.key) for item in events]
        assert heard == [Announcement(0, home, 3, -1, keys), Announcement(0, home, 4, 3, keys[:1]),
                         Announcement(1, home, 2, -1, [])]  # nobody reads a rebuild's generation yet
    finally:
        await pubsub.aclose()
        for sink in (live, rebuild):
            await sink.drop()
            await sink.close()
