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

from ams.settings import get_settings
from commands.envelope import PUT, Event, now_ms
from commands.keys import kafka_key, partition_for
from projections.redis_kv import RedisSink
from projections.redis_layout import RedisLayout
from projections.sink import Positioned, ProjectionSink
from tests.projections.sink_contract import SinkContract

pytestmark = pytest.mark.stack


class TestRedisSink(SinkContract):
    async def make_sink(self) -> ProjectionSink:
        settings = get_settings()
        # A namespace of its own: the contract's checkpoints never touch the live projection's.
        return RedisSink(settings.redis_url, RedisLayout(f"test-{uuid.uuid4().hex[:8]}"), settings.partitions)

    async def read(self, sink: ProjectionSink, tenant: str, key: str) -> dict[str, Any] | None:
        assert isinstance(sink, RedisSink)
        home = partition_for(kafka_key(tenant, key), sink.partitions)
        value, version, expires, deleted = await sink.client.hmget(
            sink.layout_of(home).record(home, tenant, key), ["value", "version", "expires", "deleted"])
        if value is None or deleted == b"1" or (int(expires or 0) and int(expires) <= now_ms()):
            return None
        return {"value": orjson.loads(value), "version": int(version)}


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[str]:
    """A real Redis replica of the stack's Redis, on a port of its own."""
    settings = get_settings()
    port = settings.redis_port + 100
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--dir", str(tmp_path), "--replicaof", "127.0.0.1", str(settings.redis_port)],
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
