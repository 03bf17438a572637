"""A strong write whose projection is late answers 504 with its position; the write itself stands."""

from __future__ import annotations

import signal

import httpx
import pytest

from ams.settings import Settings
from compose.local import LocalStack
from tests.support import extra_gateway

pytestmark = pytest.mark.stack


async def test_a_late_projection_gives_504_and_the_write_is_applied_later(
    stack: LocalStack, settings: Settings, tenant: str, api: httpx.AsyncClient
) -> None:
    projector = stack.process("projector-redis")
    async with extra_gateway(settings, tenant, {"AMS_WRITE_TIMEOUT": "0.5"}) as gateway:
        projector.send_signal(signal.SIGSTOP)
        try:
            response = await gateway.put("/v1/kv/late", json="still written")
        finally:
            projector.send_signal(signal.SIGCONT)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "projection_timeout"
    position = response.headers["X-AMS-Position"]
    assert position in response.json()["error"]["message"]
    read = await api.get("/v1/kv/late", headers={"X-AMS-Min-Position": position})
    assert read.json() == "still written"
