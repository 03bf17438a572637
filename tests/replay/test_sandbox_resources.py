"""What many sandboxes cost: PostgreSQL connections stay bounded, and a gateway serving them stops promptly."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time

import asyncpg
import httpx
import pytest

from ams.settings import Settings
from tests.conftest import token_for
from tests.replay.test_sandboxes import admin, make_sandbox

pytestmark = pytest.mark.stack
__all__ = ["admin"]  # the fixture, shared with the sandbox tests

SANDBOXES = 40
# Every process shares one pool and one LISTEN connection among all its namespaces: the gateway's pool
# (10) and listener (1), the PostgreSQL worker's sandbox pool (4), and the Redis worker's short snapshot reads.
CONNECTION_BOUND = 20


async def ams_connections(settings: Settings) -> int:
    connection = await asyncpg.connect(settings.postgres_dsn)
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'ams'")
        return count
    finally:
        await connection.close()


async def test_many_sandboxes_share_a_bounded_number_of_connections_and_each_reads_its_own_data(
    api: httpx.AsyncClient, admin: httpx.AsyncClient, settings: Settings
) -> None:
    await api.put("/v1/kv/k", json="live")
    baseline = await ams_connections(settings)
    seen = [baseline]
    names = []
    for number in range(SANDBOXES):
        name, _ = await make_sandbox(admin)
        written = await api.put("/v1/kv/k", json=f"sandbox {number}", headers={"X-AMS-Sandbox": name})
        assert written.status_code == 200, written.text
        names.append((name, written.headers["X-AMS-Position"]))
        seen.append(await ams_connections(settings))
    for number, (name, position) in enumerate(names):  # history is read from each sandbox's own schema
        history = await api.get("/v1/kv/k/history", headers={"X-AMS-Sandbox": name, "X-AMS-Min-Position": position})
        assert history.status_code == 200, history.text
        assert [entry["state"]["value"] for entry in history.json()["entries"]] == [f"sandbox {number}", "live"]
        seen.append(await ams_connections(settings))
    live = await api.get("/v1/kv/k/history")
    assert [entry["state"]["value"] for entry in live.json()["entries"]] == ["live"]
    assert max(seen) - baseline <= CONNECTION_BOUND, f"connections grew from {baseline} to {max(seen)}"


async def test_a_gateway_serving_sandboxes_stops_within_seconds_of_sigterm_even_with_open_watches(
    admin: httpx.AsyncClient, settings: Settings, tenant: str
) -> None:
    names = [(await make_sandbox(admin))[0] for _ in range(5)]
    port = settings.gateway_port + 51
    process = subprocess.Popen([sys.executable, "-m", "ams.cli", "gateway"],
                               env={**os.environ, "AMS_GATEWAY_PORT": str(port)})
    headers = {"Authorization": f"Bearer {token_for(settings, tenant)}"}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30) as client:
            async with asyncio.timeout(60):
                while True:
                    with contextlib.suppress(httpx.TransportError):
                        read = await client.get("/v1/kv/k", headers={"X-AMS-Sandbox": names[-1]})
                        if read.status_code == 404 and read.json()["error"]["code"] == "not_found":
                            break  # ready, and serving the sandboxes
                    await asyncio.sleep(0.1)
            async with contextlib.AsyncExitStack() as watches:
                for name in [None, *names]:  # open streams keep a server busy until it closes them
                    response = await watches.enter_async_context(
                        client.stream("GET", "/v1/watch", headers={"X-AMS-Sandbox": name} if name else {}))
                    assert response.status_code == 200
                started = time.monotonic()
                process.send_signal(signal.SIGTERM)
                exit_code = await asyncio.to_thread(process.wait, 30)
                stopped_in = time.monotonic() - started
        assert exit_code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
        assert stopped_in < settings.shutdown_grace_seconds + 5, f"the gateway took {stopped_in:.1f}s to stop"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
