"""The sink contract against the in-memory sink: the contract's own check, in milliseconds, without the stack."""

from __future__ import annotations

from typing import Any

from commands.envelope import now_ms
from projections.sink import ProjectionSink
from tests.projections.memory import MemorySink
from tests.projections.sink_contract import SinkContract


class TestMemorySink(SinkContract):
    async def make_sink(self) -> ProjectionSink:
        return MemorySink()

    async def read(self, sink: ProjectionSink, tenant: str, key: str) -> dict[str, Any] | None:
        assert isinstance(sink, MemorySink)
        return sink.read(tenant, key, now_ms())
