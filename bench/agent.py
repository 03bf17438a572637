"""The agent `bench.latency` plays: one tenant calling the gateway over one keep-alive connection.

Its state cycles through ``KEYS`` keys; it keeps a session token as memory_client does (the newest
position per partition of its writes); every write carries an Idempotency-Key, as memory_client's do.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np
import orjson
import redis.asyncio as aioredis

from ams.auth import issue_dev_token
from ams.settings import Settings
from bench.lean_http import Answer, LeanConnection
from commands.keys import kafka_key, partition_for
from memory_client.session import Session
from projections.redis_layout import RedisLayout

KEYS = 1000
VECTORS = 1000
DIMENSION = 384
VALUE = orjson.dumps({"step": 1, "note": "x" * 64})


def expect(answer: Answer, *statuses: int) -> Answer:
    if answer.status not in statuses:
        raise SystemExit(f"the gateway answered {answer.status}, not {statuses}: {answer.body[:300]!r}")
    return answer


class Agent:
    def __init__(self, settings: Settings, tenant: str) -> None:
        self.settings, self.tenant = settings, tenant
        token = issue_dev_token(settings, tenant, ["memory:read", "memory:write"], subject="bench")
        self.http = LeanConnection(settings.gateway_host, settings.gateway_port,
                                   {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        self.session = Session()
        self.run = uuid.uuid4().hex[:8]
        self._writes = 0
        self.last_eventual = ""  # the position of the latest eventual write
        self.queries = np.random.default_rng(7).normal(size=(64, DIMENSION)).astype(np.float32)

    def _idempotency(self) -> dict[str, str]:
        self._writes += 1
        return {"Idempotency-Key": f"bench-{self.run}-{self._writes}"}

    def put(self, key: str, *, wait: bool = True) -> str:
        """Write ``key``; its position (which joins the session token)."""
        headers = self._idempotency() | ({} if wait else {"Prefer": "respond-async"})
        answer = expect(self.http.request("PUT", f"/v1/kv/{key}", VALUE, headers), 200 if wait else 202)
        position = answer.headers["x-ams-position"]
        self.session.observe(position)
        return position

    def batch(self, operations: list[dict[str, Any]]) -> str:
        """A strong batch; its positions (they join the session token)."""
        body = orjson.dumps({"operations": operations})
        answer = expect(self.http.request("POST", "/v1/batch", body, self._idempotency()), 200)
        positions = str(orjson.loads(answer.body)["positions"])
        self.session.observe(positions)
        return positions

    def get(self, key: str, token: str | None = None) -> bytes:
        headers = {"X-AMS-Min-Position": token} if token else None
        return expect(self.http.request("GET", f"/v1/kv/{key}", headers=headers), 200).body

    def search(self, index: int, token: str | None = None) -> list[Any]:
        headers = {"X-AMS-Min-Position": token} if token else None
        answer = self.http.request("POST", "/v1/vector/search", search_body(self.queries, index), headers)
        return list(orjson.loads(expect(answer, 200).body))

    def prepare(self, timeout: float = 120.0) -> None:
        """Write the state keys and the vectors, and wait until vector search sees every vector."""
        for start in range(0, KEYS, 100):
            self.batch([{"op": "put", "key": f"state:{k}", "value": {"step": 0}} for k in range(start, start + 100)])
        vectors = np.random.default_rng(42).normal(size=(VECTORS, DIMENSION)).round(5)
        written = Session()
        for start in range(0, VECTORS, 100):
            written.observe(self.batch([{"op": "put", "key": f"vec/{row}",
                                         "value": {"embedding": vectors[row].tolist(), "row": row}}
                                        for row in range(start, start + 100)]))
        deadline = time.monotonic() + timeout
        while True:  # each try waits up to the gateway's read wait, then answers 504
            answer = self.http.request("POST", "/v1/vector/search", search_body(self.queries, 0),
                                       {"X-AMS-Min-Position": written.token or ""})
            if answer.status != 504:
                expect(answer, 200)
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"vector search did not reflect the bench's vectors within {timeout:g}s")

    async def record_keys(self, redis: aioredis.Redis) -> list[str]:
        """The Redis hash of each state key, where a GET finds it (for the raw redis-py floor)."""
        partitions = self.settings.partitions
        layout = RedisLayout(self.settings.redis_prefix)
        generations = [int(g or 0) for g in await redis.mget([layout.pointer(p) for p in range(partitions)])]
        homes = [partition_for(kafka_key(self.tenant, f"state:{k}"), partitions) for k in range(KEYS)]
        names = [layout.at(generations[home]).record(home, self.tenant, f"state:{k}") for k, home in enumerate(homes)]
        if (await redis.hmget(names[0], ["value", "version"]))[0] is None:
            raise SystemExit(f"the bench's key state:0 is not where a GET reads it ({names[0]})")
        return names


def search_body(queries: np.ndarray, index: int) -> bytes:
    return orjson.dumps({"embedding": queries[index % len(queries)].tolist(), "k": 10})
