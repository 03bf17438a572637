"""`ams demo`: a short run of an agent's memory against the running stack, for `make run`."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
from aiokafka import AIOKafkaProducer
from rich.console import Console

from ams import kafka_clients
from ams.auth import issue_dev_token
from ams.settings import Settings

console = Console()


def show(what: str, response: httpx.Response) -> None:
    console.print(f"  [bold]{what}[/bold] -> {response.status_code} {response.text[:160]}")


async def run_demo(settings: Settings) -> None:
    token = issue_dev_token(settings, "demo", ["memory:read", "memory:write"], subject="demo-agent")
    console.print(f"\n[bold]AMS gateway:[/bold] {settings.gateway_url}/v1")
    console.print(f"[bold]Dev token (tenant 'demo'):[/bold] {token}\n")
    headers = {"Authorization": f"Bearer {token}"}
    run = uuid.uuid4().hex[:6]
    async with httpx.AsyncClient(base_url=f"{settings.gateway_url}/v1", headers=headers, timeout=30) as api:
        console.print("[bold]An agent writes its session state (strong: answered once applied)[/bold]")
        started = time.perf_counter()
        written = await api.put(f"/kv/session:{run}", json={"step": 1, "goal": "book a flight"})
        show(f"PUT /kv/session:{run} ({(time.perf_counter() - started) * 1000:.1f} ms)", written)
        show(f"GET /kv/session:{run}", await api.get(f"/kv/session:{run}"))

        console.print("\n[bold]Conditional writes: the stale one loses, and the writer learns it[/bold]")
        version = written.json()["version"]
        show(f"PUT If-Match: {version}", await api.put(f"/kv/session:{run}", json={"step": 2},
                                                       headers={"If-Match": str(version)}))
        show(f"PUT If-Match: {version} (stale)", await api.put(f"/kv/session:{run}", json={"step": 9},
                                                               headers={"If-Match": str(version)}))

        console.print("\n[bold]An eventual write, then a read that waits for its consistency token[/bold]")
        fact = await api.put(f"/kv/fact:{run}", json={"likes": "window seats"}, headers={"Prefer": "respond-async"})
        show("PUT Prefer: respond-async", fact)
        show("GET X-AMS-Min-Position", await api.get(f"/kv/fact:{run}",
                                                     headers={"X-AMS-Min-Position": fact.headers["X-AMS-Position"]}))

        console.print("\n[bold]A line written straight into the log by another tool[/bold]")
        producer = AIOKafkaProducer(**settings.kafka.client_options(), acks="all")
        await producer.start()
        try:
            line = f'{{"op":"set","key":"session:console-{run}","value":{{"source":"console producer"}}}}'
            sent = await producer.send_and_wait(settings.events_topic, line.encode(), headers=[("tenant", b"demo")])
        finally:
            await kafka_clients.stop(producer)
        console.print(f"  produced {line}")
        show(f"GET /kv/session:console-{run}", await api.get(
            f"/kv/session:console-{run}", headers={"X-AMS-Min-Position": f"{sent.partition}:{sent.offset}"}))

        console.print("\n[bold]Facts written as plain text, found by a paraphrase that shares no word with them[/bold]")
        tokens = []
        for name, text in (("seat", "The traveller prefers sitting next to the window on planes."),
                           ("diet", "Vegetarian meals only, please.")):
            written = await api.put(f"/kv/facts/{run}/{name}", json={"text": text})
            show(f"PUT /kv/facts/{run}/{name}", written)
            tokens.append(written.headers["X-AMS-Position"])
        body = {"text": "Where does the passenger like to be seated?", "k": 1,
                "filter": {"$key_prefix": f"facts/{run}/"}}
        show(f"POST /vector/search {body}", await api.post(
            "/vector/search", json=body, headers={"X-AMS-Min-Position": ",".join(tokens)}))

        console.print("\n[bold]How far each projection has applied the log[/bold]")
        show("GET /positions", await api.get("/positions"))
    console.print("\nStop everything with [bold]make down[/bold] (or `ams down`).")


def main(settings: Settings) -> None:
    asyncio.run(run_demo(settings))
