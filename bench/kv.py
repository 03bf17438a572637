"""Key-value memory: the gateway against the raw clients doing the same work, in one run.

    python -m bench.kv [--count 5000] [--concurrency 16]

Needs the running stack (`make run` or `ams up`). Reports:
- GET through the gateway vs a bare Starlette endpoint (both loaded by wrk) and vs a raw redis-py HMGET of the
  same record;
- writes through the API (strong and eventual, loaded by wrk) vs a raw aiokafka producer with the same settings;
- write-to-visible lag: from sending an eventual write until the hot projection announces it applied.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid

import httpx
import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from ams import kafka_clients
from ams.auth import issue_dev_token
from ams.settings import Settings, get_settings
from bench.common import Measured, Run, console, measure, report
from bench.http_load import wrk
from commands.envelope import PUT, Event, encode, now_ms, uuid7
from commands.keys import kafka_key, partition_for
from projections.redis_layout import Announcement, RedisLayout

BARE_APP = """
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
async def value(request):
    return Response(b'{"step": 1, "note": "bare endpoint"}', media_type="application/json")
app = Starlette(routes=[Route("/value", value)])
"""


def start_bare_endpoint(port: int) -> subprocess.Popen[bytes]:
    """A Starlette app with one constant route, served by uvicorn like the gateway."""
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    code = BARE_APP + f"\nimport uvicorn\nuvicorn.run(app, host='127.0.0.1', port={port}, log_level='warning')\n"
    return subprocess.Popen([sys.executable, "-c", code], env=env)


async def wait_ready(client: httpx.AsyncClient, url: str) -> None:
    for _ in range(100):
        try:
            if (await client.get(url)).status_code < 500:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit(f"{url} did not answer; is the stack running (`ams up`)?")


async def reads(settings: Settings, api: httpx.AsyncClient, token: str, tenant: str, count: int,
                concurrency: int, seconds: int) -> list[Measured]:
    keys = [f"bench:{i}" for i in range(500)]
    await api.post("/v1/batch", json={"operations": [{"op": "put", "key": key, "value": {"step": 1, "key": key}}
                                                      for key in keys]})
    layout = RedisLayout(settings.redis_prefix)
    redis = aioredis.from_url(settings.redis_url, max_connections=concurrency)
    generations = [int(g or 0) for g in await redis.mget([layout.pointer(p) for p in range(settings.partitions)])]
    homes = [partition_for(kafka_key(tenant, key), settings.partitions) for key in keys]
    records = [layout.at(generations[home]).record(home, tenant, key) for home, key in zip(homes, keys, strict=True)]
    bare_port = settings.gateway_port + 77
    bare = start_bare_endpoint(bare_port)
    auth = {"Authorization": f"Bearer {token}"}
    try:
        await wait_ready(api, f"http://127.0.0.1:{bare_port}/value")
        gateway = wrk("gateway GET /v1/kv/{key} (wrk)", f"{settings.gateway_url}/v1/kv/bench:0", headers=auth,
                      vary_key="/v1/kv/bench:", seconds=seconds, connections=concurrency)
        endpoint = wrk("bare Starlette endpoint (wrk)", f"http://127.0.0.1:{bare_port}/value", seconds=seconds,
                       connections=concurrency)
        raw = await measure("raw redis-py HMGET", lambda i: redis.hmget(records[i % 500], ["value", "version"]),
                            count, concurrency)
    finally:
        bare.terminate()
        await redis.aclose()
    return [gateway, endpoint, raw]


async def writes(settings: Settings, token: str, tenant: str, count: int, concurrency: int,
                 seconds: int) -> list[Measured]:
    value = {"step": 1, "note": "x" * 64}
    body = orjson.dumps(value)
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    url = f"{settings.gateway_url}/v1/kv/w:0"
    strong = wrk("API PUT strong (wrk)", url, method="PUT", body=body, headers=auth, vary_key="/v1/kv/w:",
                 seconds=seconds, connections=concurrency)
    eventual = wrk("API PUT respond-async (wrk)", url, method="PUT", body=body,
                   headers={**auth, "Prefer": "respond-async"}, vary_key="/v1/kv/w:", seconds=seconds,
                   connections=concurrency)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True,
                                linger_ms=1)
    await producer.start()
    try:
        async def send(i: int) -> None:
            key = f"w:{i % 500}"
            event = Event(PUT, tenant, key, value, id=uuid7(), ts=now_ms(), actor="bench")
            await producer.send_and_wait(settings.events_topic, encode(event), key=kafka_key(tenant, key))

        raw = await measure("raw aiokafka send_and_wait", send, count, concurrency)
    finally:
        await kafka_clients.stop(producer)
    for run in (strong, eventual):
        if run.errors:
            raise SystemExit(f"{run.name}: {run.errors} of {run.count} requests failed; the numbers would lie")
    return [strong, eventual, raw]


async def visibility(settings: Settings, api: httpx.AsyncClient, count: int, concurrency: int) -> tuple[Run, Run]:
    """From sending an eventual write (and from Kafka's ack of it) until the hot projection applied it."""
    redis = aioredis.from_url(settings.redis_url)
    pubsub = redis.pubsub()
    await pubsub.subscribe(RedisLayout(settings.redis_prefix).applied_channel)
    applied: dict[int, int] = {}
    changed = asyncio.Event()

    async def listen() -> None:
        async for message in pubsub.listen():
            if message["type"] == "message":
                announced = Announcement.parse(message["data"])
                applied[announced.partition] = max(announced.offset, applied.get(announced.partition, -1))
                changed.set()

    listener = asyncio.create_task(listen())
    after_ack: list[float] = []

    async def write_then_wait(i: int) -> None:
        response = await api.put(f"/v1/kv/lag:{i % 200}", json=i, headers={"Prefer": "respond-async"})
        acknowledged = time.perf_counter()
        partition, offset = map(int, response.headers["X-AMS-Position"].split(":"))
        while applied.get(partition, -1) < offset:
            changed.clear()
            await changed.wait()
        after_ack.append(time.perf_counter() - acknowledged)

    try:
        whole = await measure("write-to-visible (from request)", write_then_wait, count, concurrency)
        return whole, Run("write-to-visible (from Kafka ack)", after_ack, whole.elapsed)
    finally:
        listener.cancel()
        await pubsub.aclose()
        await redis.aclose()


async def main(count: int, concurrency: int, seconds: int) -> None:
    settings = get_settings()
    tenant = f"bench-{uuid.uuid4().hex[:8]}"
    token = issue_dev_token(settings, tenant, ["memory:read", "memory:write"])
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=settings.gateway_url, headers={"Authorization": f"Bearer {token}"},
                                 limits=limits, timeout=60) as api:
        await wait_ready(api, "/readyz")
        console.print(f"[bold]bench.kv[/bold]: wrk {seconds}s per HTTP run, {count} operations per raw-client run, "
                      f"{concurrency} concurrent, tenant {tenant}")
        started = time.perf_counter()
        gateway, bare, raw_redis = await reads(settings, api, token, tenant, count, concurrency, seconds)
        strong, eventual, raw_kafka = await writes(settings, token, tenant, count, concurrency, seconds)
        lag, lag_after_ack = await visibility(settings, api, min(count, 2000), concurrency)
    report("key-value memory", [gateway, bare, raw_redis, strong, eventual, raw_kafka, lag, lag_after_ack], [
        ("gateway GET p50 / bare Starlette endpoint p50", gateway.p50_ms / bare.p50_ms),
        ("gateway GET req/s / bare endpoint req/s", gateway.per_second / bare.per_second),
        ("gateway GET p50 / raw redis-py HMGET p50", gateway.p50_ms / raw_redis.p50_ms),
        ("gateway GET req/s / raw redis-py ops/s", gateway.per_second / raw_redis.per_second),
        ("API eventual writes/s / raw aiokafka sends/s", eventual.per_second / raw_kafka.per_second),
        ("API strong writes/s / raw aiokafka sends/s", strong.per_second / raw_kafka.per_second),
    ])
    console.print(f"write-to-visible lag after Kafka's ack: p50 {lag_after_ack.p50_ms:.2f} ms, "
                  f"p99 {lag_after_ack.p99_ms:.2f} ms (total run {time.perf_counter() - started:.0f}s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=5, help="duration of each wrk run")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.count, arguments.concurrency, arguments.seconds))
