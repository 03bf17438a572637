"""The local launcher: `ams up` is idempotent, `ams status` tells the truth, and the gateway runs as several
processes sharing one port, each stopped and restarted on its own or all together as ``gateway``."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from ams import credentials
from ams.settings import Settings
from commands.keys import kafka_key, partition_for
from compose import gateways
from compose.local import LocalStack
from projections.redis_layout import RedisLayout
from tests.support import cold_reads, gateway_process_client

pytestmark = pytest.mark.stack


def gateway_numbers(settings: Settings) -> list[int]:
    return list(range(1, settings.gateway_processes + 1))


def listening_sockets(port: int) -> set[str]:
    """The inodes of the TCP sockets listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.add(fields[9])
    return found


def sockets_of(pid: int) -> set[str]:
    links = (path.readlink().name for path in Path(f"/proc/{pid}/fd").iterdir())
    return {link[len("socket:["):-1] for link in links if link.startswith("socket:[")}


def test_a_second_up_reuses_everything_that_runs(stack: LocalStack) -> None:
    assert stack.up(quiet=True) == []


def test_status_shows_every_component_ready(stack: LocalStack) -> None:
    rows = {name: (state, pid) for name, state, pid, _ in stack.status()}
    infrastructure = set() if stack.settings.services_given else {"kafka", "redis", "postgres"}
    gateway_processes = {gateways.name(number) for number in gateway_numbers(stack.settings)}
    expected = {"projector-redis", "projector-postgres"} | gateway_processes | infrastructure
    assert expected <= set(rows)
    for name in expected:
        assert rows[name][0] == "ready", (name, rows[name])
    assert len({rows[name][1] for name in gateway_processes}) == len(gateway_processes)  # one pid each


def thread_priorities(pid: int) -> set[int]:
    """The nice value of every thread of a process (Linux gives each thread its own)."""
    return {int(stat.read_text().rsplit(")", 1)[1].split()[16]) for stat in Path(f"/proc/{pid}/task").glob("*/stat")}


def test_background_projections_and_milvus_lite_run_at_a_lower_cpu_priority(
    stack: LocalStack, settings: Settings
) -> None:
    expected = {"projector-redis": 0, "projector-postgres": settings.background_nice,
                "projector-embedder": settings.background_nice, "projector-milvus": settings.background_nice,
                "milvus-lite": settings.background_nice, "gateway-1": 0}
    for name, nice in expected.items():
        pid = stack.process(name).pid()
        assert pid is not None, f"{name} is not running"
        assert thread_priorities(pid) == {nice}, name


def test_status_shows_each_components_security_and_no_password(stack: LocalStack) -> None:
    postures = {name: stack.posture(name) for name, _, _, _ in stack.status()}
    assert postures["kafka"] == "SASL/SCRAM-SHA-512 + ACLs, plaintext"
    assert postures["redis"] == "ACL users, default off, plaintext"
    assert postures["postgres"] == "role per component (SCRAM), TLS"
    assert "loopback only" in postures["milvus-lite"]
    for name, _, _, address in stack.status():
        secret = credentials.password(stack.settings.secrets_dir, credentials.ADMIN)
        assert secret is not None and secret not in address, name


def test_the_gateway_name_addresses_every_gateway_process(stack: LocalStack) -> None:
    assert [component.name for component in stack.named("gateway")] == [
        gateways.name(number) for number in gateway_numbers(stack.settings)]
    assert [component.name for component in stack.named("gateway-1")] == ["gateway-1"]
    with pytest.raises(KeyError):
        stack.named("gateway-0")
    with pytest.raises(KeyError):
        stack.down(["no-such-component"])


def test_every_gateway_process_listens_on_the_shared_port(stack: LocalStack) -> None:
    listening = listening_sockets(stack.settings.gateway_port)
    owners = []
    for component in stack.named("gateway"):
        pid = stack.process(component.name).pid()
        assert pid is not None, component.name
        owned = sockets_of(pid) & listening
        assert len(owned) == 1, (component.name, owned)
        owners.append(owned.pop())
    assert len(set(owners)) == len(owners)  # a socket each (SO_REUSEPORT), not one inherited socket


def test_gateway_processes_have_their_own_transactional_ids(settings: Settings) -> None:
    instances = {gateways.process_settings(settings, number).gateway_instance for number in gateway_numbers(settings)}
    assert len(instances) == settings.gateway_processes


async def test_every_gateway_process_commits_batches(stack: LocalStack, settings: Settings, tenant: str) -> None:
    """Two producers with one transactional id fence each other: each process's batches must still commit."""
    for number in gateway_numbers(settings):
        async with gateway_process_client(settings, number, tenant) as client:
            for attempt in range(3):
                batch = await client.post("/v1/batch", json={"operations": [
                    {"op": "put", "key": f"p{number}/{attempt}/{n}", "value": {"n": n}} for n in range(2)]})
                assert batch.status_code == 200, (number, batch.text)


async def evict(settings: Settings, tenant: str, key: str) -> None:
    """Delete ``key``'s record from Redis (PostgreSQL still has it), so that its next read is a cold one."""
    layout = RedisLayout(settings.redis_prefix)
    home = partition_for(kafka_key(tenant, key), settings.partitions)
    redis = aioredis.from_url(settings.redis_url)
    try:
        generation = int(await redis.get(layout.pointer(home)) or 0)
        assert await redis.delete(layout.at(generation).record(home, tenant, key)) == 1
    finally:
        await redis.aclose()


async def test_metrics_on_the_shared_port_count_every_gateway_process(
    stack: LocalStack, settings: Settings, api: httpx.AsyncClient, tenant: str
) -> None:
    numbers = gateway_numbers(settings)
    for number in numbers:
        written = await api.put(f"/v1/kv/evicted-{number}", json={"n": number})
        durable = await api.get(f"/v1/kv/evicted-{number}/history",
                                headers={"X-AMS-Min-Position": written.json()["position"]})
        assert durable.status_code == 200, durable.text
        await evict(settings, tenant, f"evicted-{number}")
    before = await cold_reads(settings, "redis_miss")
    for number in numbers:  # one cold read in each process
        async with gateway_process_client(settings, number, tenant) as client:
            assert (await client.get(f"/v1/kv/evicted-{number}")).json() == {"n": number}
    for _ in range(4):  # whichever process answers on the shared port, it counts them all
        assert await cold_reads(settings, "redis_miss") == before + len(numbers)


async def test_one_gateway_process_restarts_alone_while_the_others_serve(
    stack: LocalStack, settings: Settings, api: httpx.AsyncClient
) -> None:
    last, *others = reversed(stack.named("gateway"))
    pids = {component.name: stack.process(component.name).pid() for component in others}
    assert await asyncio.to_thread(stack.down, [last.name]) == [last.name]
    assert stack.process(last.name).pid() is None
    if others:  # the port keeps serving through the other processes
        for n in range(10):
            assert (await api.put(f"/v1/kv/while-down/{n}", json={"value": n})).status_code == 200
    assert await asyncio.to_thread(stack.start, "gateway") == [last.name]
    assert {component.name: stack.process(component.name).pid() for component in others} == pids
    rows = {name: state for name, state, _, _ in await asyncio.to_thread(stack.status)}
    assert rows[last.name] == "ready"


async def test_a_sandbox_created_through_one_gateway_process_is_served_at_once_by_every_other(
    settings: Settings, tenant: str
) -> None:
    name = f"sb-{uuid.uuid4().hex[:8]}"
    async with gateway_process_client(settings, 1, tenant, "memory:admin") as creator:
        created = await creator.post("/v1/sandboxes", json={"name": name})
        assert created.status_code == 201, created.text
        try:
            for number in gateway_numbers(settings):  # no time for the others' registry followers to catch up
                async with gateway_process_client(settings, number, tenant) as client:
                    read = await client.get("/v1/kv/k", headers={"X-AMS-Sandbox": name})
                    assert read.status_code == 404 and read.json()["error"]["code"] == "not_found", read.text
        finally:
            assert (await creator.delete(f"/v1/sandboxes/{name}")).status_code in (200, 204)
