"""Attacks on every door of the gateway and the workers, through the real processes (issue 19, part A).

Sandbox names that read alike are kept apart, a squatted topic is a 409 that touches nothing, reserved
tenants and badly typed claims get a 401, oversized or slow request heads and bodies get a 4xx while others
are served, positions past Kafka's range are a 400, an exposed gateway refuses insecure settings, and the
workers' metrics name no tenant and are not served off loopback without a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial

import asyncpg
import httpx
import jwt
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ams import kafka_clients
from ams.auth import issue_dev_token
from ams.namespaces import kafka_collision_form, sandbox
from ams.settings import Settings
from commands.keys import MAX_OFFSET, InvalidName
from projections.worker import ProjectionWorker, web_port
from replay.sandboxes import SandboxSpec, _register
from tests.ams.test_auth import claims
from tests.conftest import token_for
from tests.support import extra_gateway, topic_exists
from tests.test_limits import assert_error

pytestmark = pytest.mark.stack


@contextlib.asynccontextmanager
async def admin_of(settings: Settings, tenant: str) -> AsyncIterator[httpx.AsyncClient]:
    """``tenant``'s admin client; the sandboxes it leaves are dropped."""
    headers = {"Authorization": f"Bearer {token_for(settings, tenant, 'memory:admin')}"}
    async with httpx.AsyncClient(base_url=settings.gateway_url, headers=headers, timeout=60) as client:
        try:
            yield client
        finally:
            for found in (await client.get("/v1/sandboxes")).json()["items"]:
                if found["owner"] == tenant:
                    await client.delete(f"/v1/sandboxes/{found['name']}")


async def test_sandboxes_whose_names_read_alike_are_kept_apart(settings: Settings) -> None:
    """Tenant `x-b`'s sandbox `c` and tenant `x`'s sandbox `b-c` once shared one PostgreSQL schema: each
    corrupted the other's checkpoints, and dropping one dropped the other's."""
    base = f"t{uuid.uuid4().hex[:8]}"
    pairs = [(f"{base}-b", "c"), (base, "b-c")]
    schemas = [sandbox(settings, owner, name).postgres_schema for owner, name in pairs]
    async with admin_of(settings, pairs[0][0]) as first, admin_of(settings, pairs[1][0]) as second:
        for client, (owner, name) in zip((first, second), pairs, strict=True):
            assert (await client.post("/v1/sandboxes", json={"name": name})).status_code == 201
            put = await client.put("/v1/kv/k", json=owner, headers={"X-AMS-Sandbox": name})
            assert put.status_code == 200, put.text
            assert (await client.get("/v1/kv/k", headers={"X-AMS-Sandbox": name})).json() == owner
        for schema, (owner, _) in zip(schemas, pairs, strict=True):
            await eventually(partial(durable_keys, settings, schema, owner), ["k"])
        assert (await first.delete("/v1/sandboxes/c")).status_code == 200
        await eventually(lambda: durable_keys(settings, schemas[0], pairs[0][0]), None)
        assert await durable_keys(settings, schemas[1], base) == ["k"]
        assert (await second.get("/v1/kv/k", headers={"X-AMS-Sandbox": "b-c"})).json() == base


async def durable_keys(settings: Settings, schema: str, tenant: str) -> list[str] | None:
    """The tenant's keys in the PostgreSQL schema (None: no such schema)."""
    connection = await asyncpg.connect(settings.postgres_dsn)
    try:
        rows = await connection.fetch(f'SELECT key FROM "{schema}".kv_current WHERE tenant = $1', tenant)
    except asyncpg.UndefinedTableError:
        return None
    finally:
        await connection.close()
    return sorted(row["key"] for row in rows)


async def eventually(read: Callable[[], Awaitable[object]], expected: object, seconds: float = 60) -> None:
    async with asyncio.timeout(seconds):
        while (found := await read()) != expected:
            await asyncio.sleep(0.2)
    assert found == expected


async def test_the_longest_names_make_a_sandbox_that_works(settings: Settings) -> None:
    """A 64-character tenant's 48-character sandbox: its schema once passed PostgreSQL's 63 and answered 500."""
    tenant, name = f"t{uuid.uuid4().hex}".ljust(64, "x"), "n" * 48
    async with admin_of(settings, tenant) as admin:
        created = await admin.post("/v1/sandboxes", json={"name": name})
        assert created.status_code == 201, created.text
        assert (await admin.put("/v1/kv/k", json=1, headers={"X-AMS-Sandbox": name})).status_code == 200
        assert (await admin.get("/v1/kv/k", headers={"X-AMS-Sandbox": name})).json() == 1
        await eventually(lambda: durable_keys(settings, sandbox(settings, tenant, name).postgres_schema, tenant),
                         ["k"])
        assert_error(await admin.post("/v1/sandboxes", json={"name": name + "n"}), 400, "invalid_name")


async def test_a_squatted_topic_is_a_409_and_nothing_is_made(settings: Settings, tenant: str) -> None:
    """Another topic in the place of the sandbox's embeddings stream (as Kafka compares names, '.' as '_'):
    the create is refused and leaves no topic and no registration behind."""
    name = f"sq-{uuid.uuid4().hex[:6]}"
    namespace = sandbox(settings, tenant, name)
    squat = kafka_collision_form(namespace.embeddings_topic)
    client = AIOKafkaAdminClient(**settings.kafka.client_options())
    await client.start()
    try:
        await client.create_topics([NewTopic(squat, 1, 1)])
        async with admin_of(settings, tenant) as admin:
            refused = await admin.post("/v1/sandboxes", json={"name": name})
            assert_error(refused, 409, "sandbox_exists")
            assert squat in refused.json()["error"]["message"]
            assert name not in [found["name"] for found in (await admin.get("/v1/sandboxes")).json()["items"]]
        assert not await topic_exists(settings, namespace.topic)
        assert await topic_exists(settings, squat)
    finally:
        await client.delete_topics([squat])
        await kafka_clients.stop(client)


async def test_a_tenant_past_its_sandbox_quota_gets_403(settings: Settings, tenant: str) -> None:
    env = {"AMS_MAX_SANDBOXES_PER_TENANT": "1"}
    async with extra_gateway(settings, tenant, env) as client, admin_of(settings, tenant) as admin:
        headers = {"Authorization": f"Bearer {token_for(settings, tenant, 'memory:admin')}"}
        assert (await client.post("/v1/sandboxes", json={"name": "one"}, headers=headers)).status_code == 201
        assert_error(await client.post("/v1/sandboxes", json={"name": "two"}, headers=headers), 403, "sandbox_quota")
        assert [found["name"] for found in (await admin.get("/v1/sandboxes")).json()["items"]] == ["one"]


async def test_a_worker_reports_a_sandbox_without_topics_and_does_not_spin(settings: Settings, tenant: str) -> None:
    """A registration whose topics are missing (written past AMS, straight into the registry)."""
    spec = SandboxSpec(tenant, "ghost")
    page = f"http://127.0.0.1:{web_port(settings, 'redis')}/metrics"
    await _register(settings, spec.registry_key, spec)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            for _ in range(100):
                if "ams_projection_sandboxes_unserved 1.0" in (await client.get(page)).text:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the worker never reported the sandbox it cannot project")
    finally:
        await _register(settings, spec.registry_key, None)


def forged(settings: Settings, **changes: object) -> str:
    base: dict[str, object] = {"aud": settings.jwt_audience, "iss": settings.jwt_issuer}
    return jwt.encode(claims(**{**base, **changes}), settings.jwt_secret, algorithm="HS256")


@pytest.mark.parametrize("change", [{"tenant": "all"}, {"scope": 7}, {"scope": {"memory:read": True}},
                                    {"scope": ["memory:read", 3]}, {"scope": True}])
async def test_reserved_tenants_and_badly_typed_scopes_get_401(settings: Settings, tenant: str,
                                                               change: dict[str, object]) -> None:
    token = forged(settings, **{"tenant": tenant, **change})
    async with httpx.AsyncClient(base_url=settings.gateway_url, timeout=30) as client:
        answer = await client.get("/v1/kv/k", headers={"Authorization": f"Bearer {token}"})
    assert_error(answer, 401, "unauthorized")


def test_no_token_is_issued_for_a_reserved_tenant(settings: Settings) -> None:
    with pytest.raises(InvalidName, match="reserved"):
        issue_dev_token(settings, "all", ["memory:read"])


@pytest.mark.parametrize("size", [40 << 10, 8 << 20])
async def test_oversized_headers_get_431_and_others_are_served(api: httpx.AsyncClient, size: int) -> None:
    huge = await raw_request(api, f"GET /v1/kv/k HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * size}\r\n\r\n".encode())
    assert huge.startswith(b"HTTP/1.1 431 "), huge[:200]
    assert b'"headers_too_large"' in huge
    assert (await api.get("/v1/kv/k")).status_code == 404


async def raw_request(api: httpx.AsyncClient, data: bytes, port: int | None = None) -> bytes:
    """Send ``data`` on a fresh connection; everything the server answers before it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port or api.base_url.port)
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(data)
            await writer.drain()
        return await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()


async def test_a_slow_head_or_body_gets_408_while_others_are_served(settings: Settings, tenant: str) -> None:
    env = {"AMS_HEADER_TIMEOUT_SECONDS": "1", "AMS_BODY_TIMEOUT_SECONDS": "1"}
    async with extra_gateway(settings, tenant, env) as client:
        port = client.base_url.port
        token = token_for(settings, tenant)
        slow_head = asyncio.create_task(raw_request(client, b"GET /v1/kv/k HTTP/1.1\r\nHost: x\r\n", port))
        silent = asyncio.create_task(raw_request(client, b"", port))
        slow_body = asyncio.create_task(raw_request(client, (
            f"PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json"
            "\r\nContent-Length: 10\r\n\r\n12").encode(), port))
        for _ in range(5):  # meanwhile, another client is answered
            assert (await client.get("/v1/kv/other")).status_code == 404
        head, nothing, body = await asyncio.gather(slow_head, silent, slow_body)
        assert head.startswith(b"HTTP/1.1 408 ") and b'"header_timeout"' in head, head
        assert nothing.startswith(b"HTTP/1.1 408 "), nothing
        assert b" 408 " in body.split(b"\r\n")[0] and b'"body_timeout"' in body, body


async def test_connections_past_the_limit_get_503_and_the_gateway_recovers(settings: Settings, tenant: str) -> None:
    async with extra_gateway(settings, tenant, {"AMS_MAX_CONNECTIONS": "3"}) as client:
        port = client.base_url.port
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        async with httpx.AsyncClient(base_url=str(client.base_url), headers=client.headers, timeout=30) as fresh:
            assert (await fresh.get("/v1/kv/k")).status_code == 503
            for _, writer in held:
                writer.close()
            await asyncio.sleep(0.5)
            assert (await fresh.get("/v1/kv/k")).status_code == 404


@pytest.mark.parametrize("position", ["0:9223372036854775808", "0:99999999999999999999999999999999",
                                      "2147483648:0", f"0:{'9' * 5000}", "0:٣"])
async def test_positions_past_kafkas_range_are_a_400(api: httpx.AsyncClient, position: str) -> None:
    """Each once overflowed where it was passed on (a 500, or a stream that aborted); the last is a digit
    to Python's str.isdigit, not to Kafka (sent as UTF-8)."""
    raw = position.encode()
    for path in ("/v1/kv/k", "/v1/kv"):
        answer = await api.get(path, headers={b"X-AMS-Min-Position": raw})
        assert answer.status_code == 400, (path, answer.text[:300])
    assert (await api.post("/v1/vector/search", json={"embedding": [1.0, 0.0]},
                           headers={b"X-AMS-Min-Position": raw})).status_code == 400
    assert_error(await api.get("/v1/watch", headers={b"Last-Event-ID": raw}), 400, "invalid_position")


async def test_the_last_kafka_offset_is_a_position_no_event_has(api: httpx.AsyncClient) -> None:
    assert_error(await api.get("/v1/kv/k", headers={"X-AMS-Min-Position": f"0:{MAX_OFFSET}"}), 400,
                 "position_beyond_log")
    async with api.stream("GET", "/v1/watch", headers={"Last-Event-ID": f"0:{MAX_OFFSET}"}) as watching:
        assert watching.status_code == 200


def gateway_start(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Start a gateway that should refuse to start (it would otherwise serve until the timeout)."""
    return subprocess.run([sys.executable, "-m", "ams.cli", "gateway", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("env", "args", "named"), [
    ({}, ("--host", "0.0.0.0"), "development secret"),
    ({"AMS_ENV": "production"}, (), "development secret"),
    ({"AMS_ENV": "production", "AMS_JWT_SECRET": "short"}, (), "5 bytes"),
    ({"AMS_TLS_CERTFILE": "/etc/hostname"}, (), "AMS_TLS_KEYFILE"),
])
def test_an_exposed_gateway_refuses_insecure_settings(settings: Settings, env: dict[str, str], args: tuple[str, ...],
                                                     named: str) -> None:
    started = gateway_start({**env, "AMS_GATEWAY_PORT": str(settings.gateway_port + 51)}, *args)
    assert started.returncode != 0
    assert "refuses to start" in started.stderr and named in started.stderr, started.stderr


def test_a_worker_refuses_metrics_off_loopback_without_a_token() -> None:
    started = subprocess.run([sys.executable, "-m", "ams.cli", "project", "redis"], capture_output=True, text=True,
                             env={**os.environ, "AMS_METRICS_HOST": "0.0.0.0"}, timeout=60)
    assert started.returncode != 0 and "AMS_METRICS_TOKEN" in started.stderr, started.stderr


async def test_worker_metrics_with_a_token_answer_only_that_token(settings: Settings) -> None:
    worker = ProjectionWorker("redis", Settings(metrics_token="s3cret"))
    transport = httpx.ASGITransport(app=worker.app())
    async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
        for page in ("/metrics", "/positions"):
            assert (await client.get(page)).status_code == 401
            assert (await client.get(page, headers={"Authorization": "Bearer wrong"})).status_code == 401
            assert (await client.get(page, headers={"Authorization": "Bearer s3cret"})).status_code == 200


async def test_workers_metrics_name_no_tenant(settings: Settings, tenant: str) -> None:
    async with admin_of(settings, tenant) as admin:
        name = f"m-{uuid.uuid4().hex[:6]}"
        assert (await admin.post("/v1/sandboxes", json={"name": name})).status_code == 201
        assert (await admin.put("/v1/kv/k", json=1, headers={"X-AMS-Sandbox": name})).status_code == 200
        namespace = sandbox(settings, tenant, name)
        await eventually(lambda: durable_keys(settings, namespace.postgres_schema, tenant), ["k"])
        async with httpx.AsyncClient(timeout=10) as client:
            pages = {projection: (await client.get(f"http://127.0.0.1:{web_port(settings, projection)}/metrics")).text
                     for projection in ("redis", "postgres", "embedder")}
        assert f'projection="postgres {namespace.metrics_label}"' in pages["postgres"]
        for projection, page in pages.items():
            assert tenant not in page and name not in page, projection
