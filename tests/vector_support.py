"""Helpers for tests of vector memory through the real stack."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import numpy as np

from ams.settings import Settings
from commands.envelope import Event, encode
from commands.keys import format_positions, kafka_key, parse_positions, partition_for
from tests.support import produce_raw


def merge_tokens(*tokens: str) -> str:
    positions: dict[int, int] = {}
    for token in tokens:
        for partition, offset in parse_positions(token).items():
            positions[partition] = max(offset, positions.get(partition, -1))
    return format_positions(positions)


async def put_all(api: httpx.AsyncClient, values: dict[str, Any]) -> str:
    """PUT every value; the consistency token covering all the writes."""
    tokens = []
    for key, value in values.items():
        response = await api.put(f"/v1/kv/{key}", json=value)
        assert response.status_code == 200, response.text
        tokens.append(response.headers["X-AMS-Position"])
    return merge_tokens(*tokens)


async def append_event(settings: Settings, event: Event) -> str:
    """Append an event straight to the log (the trusted path), as the gateway would; its position."""
    record_key = kafka_key(event.tenant, event.key)
    partition, offset = await produce_raw(settings, encode(event), key=record_key,
                                          partition=partition_for(record_key, settings.partitions))
    return f"{partition}:{offset}"


async def search(api: httpx.AsyncClient, token: str | None = None, **body: Any) -> list[dict[str, Any]]:
    """Search; with a token, wait for the view (vectors are near-real-time: a slow view may need more than
    one bounded wait of the gateway, so a consistency timeout is retried for up to a minute)."""
    headers = {"X-AMS-Min-Position": token} if token else {}
    async with asyncio.timeout(60):
        while True:
            response = await api.post("/v1/vector/search", json=body, headers=headers)
            if response.status_code != 504:
                break
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()
    return results


def clustered(count: int, dim: int, seed: int, clusters: int = 10) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    return (centres[rng.integers(0, clusters, count)] + 0.4 * rng.normal(size=(count, dim))).astype(np.float32)
