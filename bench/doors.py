"""Whether attacks on the gateway's doors hold up other clients: one client's sequential GET latency alone,
then while slow clients trickle request heads and others send 8 MB heads, then while a sandbox is created.

    python -m bench.doors [--requests 300] [--slow 200]

Against the running stack (`ams up`), with a throwaway tenant. Each attack runs for the whole of its phase;
the figures are the other client's round trips (p50, p99, worst) and how each attack was answered.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable

import httpx
from rich.table import Table

from ams.auth import ADMIN, issue_dev_token
from ams.settings import Settings, get_settings
from bench.common import Latencies, console, progress


async def sequential_gets(client: httpx.AsyncClient, requests: int, name: str) -> Latencies:
    latencies = Latencies(name)
    for _ in range(requests):
        started = time.perf_counter()
        await client.get("/v1/kv/k")
        latencies.samples.append((time.perf_counter() - started) * 1000)
    return latencies


async def slow_head(settings: Settings, answers: list[bytes], stop: asyncio.Event) -> None:
    """A head sent a byte every half second, until the gateway answers or the phase ends."""
    reader, writer = await asyncio.open_connection(settings.gateway_host, settings.gateway_port)
    try:
        for byte in b"GET /v1/kv/k HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000:
            if stop.is_set() or reader.at_eof():
                break
            writer.write(bytes([byte]))
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                answers.append(await asyncio.wait_for(reader.read(100), 0.5))
                return
    except ConnectionError:
        answers.append(b"reset")
    finally:
        writer.close()


async def huge_heads(settings: Settings, answers: list[bytes], stop: asyncio.Event) -> None:
    """8 MB heads, one after another, until the phase ends."""
    head = b"GET /v1/kv/k HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (8 << 20) + b"\r\n\r\n"
    while not stop.is_set():
        reader, writer = await asyncio.open_connection(settings.gateway_host, settings.gateway_port)
        try:
            writer.write(head)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            answers.append((await reader.read(100))[:12])
        except ConnectionError:
            answers.append(b"reset")
        finally:
            writer.close()


async def measured_while(attack: Callable[[asyncio.Event], Awaitable[object]], client: httpx.AsyncClient,
                         requests: int, name: str, settle: float = 0.5) -> Latencies:
    """``settle``: how long the attack runs before the measurement starts."""
    stop = asyncio.Event()
    running = asyncio.ensure_future(attack(stop))
    await asyncio.sleep(settle)
    try:
        return await sequential_gets(client, requests, name)
    finally:
        stop.set()
        await running


async def main(requests: int, slow: int) -> None:
    settings = get_settings()
    tenant = f"bench{uuid.uuid4().hex[:8]}"
    headers = {"Authorization": f"Bearer {issue_dev_token(settings, tenant, [ADMIN], subject='bench')}"}
    async with httpx.AsyncClient(base_url=settings.gateway_url, headers=headers, timeout=60) as client:
        await client.put("/v1/kv/k", json=1)
        await sequential_gets(client, 50, "warm-up")
        answers: dict[str, list[bytes]] = {"slow heads": [], "8 MB heads": []}
        results = [await sequential_gets(client, requests, "alone")]
        progress.print(f"{slow} slow heads")
        results.append(await measured_while(lambda stop: asyncio.gather(
            *(slow_head(settings, answers["slow heads"], stop) for _ in range(slow))), client, requests,
            f"{slow} slow heads"))
        progress.print("8 MB heads")
        results.append(await measured_while(lambda stop: huge_heads(settings, answers["8 MB heads"], stop), client,
                                            requests, "8 MB heads, one after another"))
        progress.print("a sandbox created")
        name = f"bench-{uuid.uuid4().hex[:6]}"
        created: list[float] = []

        async def create(stop: asyncio.Event) -> None:
            started = time.perf_counter()
            await client.post("/v1/sandboxes", json={"name": name})
            created.append(time.perf_counter() - started)

        results.append(await measured_while(create, client, requests, "a sandbox being created", settle=0.01))
        await client.delete(f"/v1/sandboxes/{name}")
    table = Table("other client's GETs, while", "p50 ms", "p99 ms", "worst ms")
    for result in results:
        table.add_row(result.name, f"{result.p50:.2f}", f"{result.p99:.2f}", f"{max(result.samples):.2f}")
    console.print(table)
    for attack, got in answers.items():
        kinds = sorted({answer.split(b"\r\n")[0][:12].decode(errors="replace") for answer in got})
        console.print(f"{attack}: {len(got)} answered: {', '.join(kinds) or 'none within the phase'}")
    console.print(f"sandbox create took {created[0]:.2f}s" if created else "sandbox create did not finish")


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="sequential GETs per phase")
    parser.add_argument("--slow", type=int, default=200, help="slow clients at once")
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.slow))


if __name__ == "__main__":
    run()
