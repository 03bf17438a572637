"""One run: the workload on a fresh tenant, a scenario's faults while it runs, healing, catching up, checking."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
import uuid
from collections.abc import Callable, Sequence

import httpx
import orjson
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ams.auth import issue_dev_token
from ams.settings import Settings
from commands.envelope import PUT, STREAM_APPEND
from compose.local import LocalStack
from tests.faults.checker import Verdict, check
from tests.faults.faults import FaultContext, Scenario
from tests.faults.history import Ack, Kind, Operation
from tests.faults.logview import LogView, log_heads, read_log
from tests.faults.views import ProjectionView, views
from tests.faults.workload import Workload, WorkloadConfig

CATCH_UP_SECONDS = 180.0
EVENT_PROJECTIONS = ("redis", "postgres")  # what /v1/positions reports of the projections of memory.events
QUIET_SECONDS = 1.0  # the log must stop growing this long before it is read (late appends land first)


async def inject(ctx: FaultContext, scenario: Scenario, deadline: float) -> list[str]:
    """Inject the scenario's faults one after another until ``deadline`` (a tour: each once, whatever the
    deadline); return the names of those injected."""
    injected: list[str] = []
    await asyncio.sleep(scenario.first_after)
    tour = ctx.rng.sample(scenario.faults, len(scenario.faults)) if scenario.once else []
    while tour or (not scenario.once and time.monotonic() < deadline):
        fault = tour.pop(0) if scenario.once else ctx.rng.choice(scenario.faults)
        await fault.inject(ctx)
        injected.append(fault.name)
        await asyncio.sleep(scenario.between)
    return injected


async def heal(stack: LocalStack) -> None:
    """Whatever a fault left behind: a stopped broker gets SIGCONT, every component runs and answers."""
    with contextlib.suppress(ProcessLookupError):
        stack.process("kafka").send_signal(signal.SIGCONT)
    await asyncio.to_thread(stack.up, True, True)


async def still_writable(workload: Workload) -> list[str]:
    """After the faults, with the stack healed: a strong write, a batch and a stream append are each
    acknowledged (a producer or listener that did not recover from a fault shows here)."""
    probes = [
        workload.command(writer=-2, kind=Kind.PUT, method="PUT", path="/v1/kv/after-faults", body=b'"healed"',
                         operations=[Operation("", PUT, "after-faults")]),
        workload.command(writer=-2, kind=Kind.BATCH, method="POST", path="/v1/batch",
                         body=orjson.dumps({"operations": [{"op": "put", "key": "after-faults/1", "value": 1},
                                                           {"op": "put", "key": "after-faults/2", "value": 2}]}),
                         operations=[Operation("", PUT, "after-faults/1"), Operation("", PUT, "after-faults/2")]),
        workload.command(writer=-2, kind=Kind.STREAM, method="POST", path="/v1/streams/after-faults", body=b"1",
                         operations=[Operation("", STREAM_APPEND, "after-faults")]),
    ]
    for probe in probes:
        await workload.one(probe)
    return [f"after the faults, {probe.describe()} was not acknowledged: {probe.http_status} {probe.errors[-3:]}"
            for probe in probes if probe.ack is not Ack.ACKNOWLEDGED]


async def quiet_log(settings: Settings) -> dict[int, int]:
    """Wait until the log stops growing (appends a gateway gave up waiting for may still land)."""
    heads = await log_heads(settings)
    while True:
        await asyncio.sleep(QUIET_SECONDS)
        now = await log_heads(settings)
        if now == heads:
            return now
        heads = now


async def caught_up(settings: Settings, token: str, log: LogView, progress: Callable[[str], None]) -> dict[int, int]:
    """Wait until every projection `/v1/positions` reports has applied the log's last record of every partition.

    Returns the Redis projection's applied offsets. Raises TimeoutError saying which partitions lag.
    """
    deadline = time.monotonic() + CATCH_UP_SECONDS
    behind: dict[str, dict[int, int]] = {}
    async with httpx.AsyncClient(base_url=settings.gateway_url, timeout=10,
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        while time.monotonic() < deadline:
            try:
                body = (await client.get("/v1/positions")).raise_for_status().json()
            except httpx.HTTPError as error:
                progress(f"waiting for /v1/positions ({error!r})")
                await asyncio.sleep(0.5)
                continue
            behind = {}
            for name in EVENT_PROJECTIONS:
                partitions = body["projections"][name]
                applied = {int(partition): entry["applied"] for partition, entry in partitions.items()}
                lagging = {p: last for p, last in log.last_offsets.items() if applied.get(p, -1) < last}
                if lagging:
                    behind[name] = {p: last - applied.get(p, -1) for p, last in lagging.items()}
            if not behind:
                return {int(p): entry["applied"] for p, entry in body["projections"]["redis"].items()}
            progress(f"catching up: {behind}")
            await asyncio.sleep(0.25)
    raise TimeoutError(f"projections did not apply the whole log within {CATCH_UP_SECONDS:g}s; "
                       f"events behind per partition: {behind}")


async def run_scenario(stack: LocalStack, settings: Settings, scenario: Scenario, seconds: float, seed: int,
                       console: Console | None = None,
                       make_views: Callable[[Settings, str], Sequence[ProjectionView]] = views) -> Verdict:
    console = console or Console()
    began = time.monotonic()
    tenant = f"f{uuid.uuid4().hex[:12]}"
    token = issue_dev_token(settings, tenant, ["memory:read", "memory:write"])
    console.print(f"[bold]{scenario.name}[/bold]: {seconds:g}s of workload, seed {seed}, tenant {tenant}")
    since = await log_heads(settings)
    workload = Workload(settings.gateway_url, token, tenant, WorkloadConfig(seed=seed))
    ctx = FaultContext(stack, settings, tenant, random.Random(f"{seed}/faults"), workload)
    verdict = Verdict(scenario.name, seed, seconds)
    stop = asyncio.Event()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=False) as progress:
        task = progress.add_task("starting")

        def show(phase: str = "") -> None:
            history = workload.history
            acked = sum(1 for command in history.commands if command.ack.value == "acknowledged")
            line = (f"{scenario.name}: {len(history.commands)} commands, {acked} acknowledged, "
                    f"{workload.retries} retries, {workload.in_flight} in flight, faults: {len(ctx.log)} events")
            progress.update(task, description=f"{line} {phase}".strip())

        writing = asyncio.create_task(workload.run(stop, show))
        injecting = asyncio.create_task(inject(ctx, scenario, time.monotonic() + seconds))
        end = time.monotonic() + seconds
        while time.monotonic() < end or not injecting.done():
            show(f"| {ctx.log[-1] if ctx.log else 'writing'}")
            await asyncio.sleep(0.25)
        stop.set()
        show("| stopping: finishing the fault in progress and the commands in flight")
        verdict.fault_kinds = await injecting
        verdict.faults = len(verdict.fault_kinds)
        history = await writing
        show("| healing the stack")
        await heal(stack)
        show("| checking that the healed stack takes writes")
        verdict.divergent += await still_writable(workload)
        show("| waiting for the log to settle")
        await quiet_log(settings)
        log = await read_log(settings, tenant, since)
        try:
            applied = await caught_up(settings, token, log, lambda text: show(f"| {text}"))
        except TimeoutError as error:
            verdict.divergent.append(str(error))
            applied = {}
        show("| checking")
    verdict.fault_log = ctx.log
    verdict.divergent += ctx.problems
    await check(settings, history, log, make_views(settings, token) if applied else [], ctx.poison, applied, verdict)
    verdict.duration = time.monotonic() - began
    return verdict
