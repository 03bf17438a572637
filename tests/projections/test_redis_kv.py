from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest

from ams.settings import get_settings
from commands.envelope import now_ms
from commands.keys import kafka_key, partition_for
from projections.redis_kv import RedisSink
from projections.redis_layout import RedisLayout
from projections.sink import ProjectionSink
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
            sink.layout.record(home, tenant, key), ["value", "version", "expires", "deleted"])
        if value is None or deleted == b"1" or (int(expires or 0) and int(expires) <= now_ms()):
            return None
        return {"value": orjson.loads(value), "version": int(version)}
