"""Writes while Kafka does not answer: a bounded 504 that says what to do, never a request left hanging."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import pytest

from ams.settings import Settings
from compose.local import LocalStack

pytestmark = pytest.mark.stack


async def test_writes_during_a_broker_pause_answer_504_in_bounded_time_and_a_retry_applies_once(
    stack: LocalStack, settings: Settings, api: httpx.AsyncClient
) -> None:
    broker = stack.process("kafka")
    bound = settings.log_timeout + settings.write_timeout + 2
    broker.send_signal(signal.SIGSTOP)
    try:
        began = time.monotonic()
        answers = await asyncio.gather(
            api.put("/v1/kv/paused", json=1, headers={"Idempotency-Key": "paused-put"}, timeout=bound + 10),
            api.put("/v1/kv/paused-async", json=1, headers={"Prefer": "respond-async"}, timeout=bound + 10),
            api.post("/v1/batch", json={"operations": [{"op": "put", "key": "paused-b", "value": 1}]},
                     timeout=bound + 10),
            api.post("/v1/streams/paused", json=1, timeout=bound + 10),
        )
        took = time.monotonic() - began
    finally:
        broker.send_signal(signal.SIGCONT)
    assert took < bound, f"writes took {took:.1f}s while the broker was paused"
    for answer in answers:
        assert answer.status_code == 504, answer.text
        assert answer.json()["error"]["code"] == "log_timeout"
        assert "Idempotency-Key" in answer.json()["error"]["message"]
    retry = await api.put("/v1/kv/paused", json=1, headers={"Idempotency-Key": "paused-put"}, timeout=60)
    assert retry.status_code == 200, retry.text
    assert retry.json()["status"] in ("accepted", "duplicate")
    again = await api.put("/v1/kv/paused", json=1, headers={"Idempotency-Key": "paused-put"}, timeout=60)
    assert again.json()["status"] == "duplicate" and again.json()["version"] == retry.json()["version"]
