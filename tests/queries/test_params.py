"""Read parameters against the running gateway: a consistency token already applied costs no trip to Kafka."""

from __future__ import annotations

import httpx
import pytest

from ams.settings import Settings
from tests.support import gateway_metric

pytestmark = pytest.mark.stack

LOOKUPS = "ams_gateway_log_end_lookups_total"


async def test_a_token_a_projection_has_applied_is_not_checked_against_kafka(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    written = await api.put("/v1/kv/applied", json=1)  # strong: applied by the hot projection when it answers
    token = {"X-AMS-Min-Position": written.headers["X-AMS-Position"]}
    before = await gateway_metric(settings.gateway_url, LOOKUPS)
    for path in ("/v1/kv/applied", "/v1/kv", "/v1/kv/applied/history"):
        for _ in range(5):
            assert (await api.get(path, headers=token)).status_code == 200
    assert await gateway_metric(settings.gateway_url, LOOKUPS) == before


async def test_a_token_past_the_end_of_the_log_is_checked_against_kafka_and_refused(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    written = await api.put("/v1/kv/applied", json=1)
    partition, offset = written.headers["X-AMS-Position"].split(":")
    before = await gateway_metric(settings.gateway_url, LOOKUPS)
    beyond = await api.get("/v1/kv/applied", headers={"X-AMS-Min-Position": f"{partition}:{int(offset) + 10**9}"})
    assert beyond.status_code == 400
    assert beyond.json()["error"]["code"] == "position_beyond_log"
    assert await gateway_metric(settings.gateway_url, LOOKUPS) == before + 1
