"""`ams rebuild redis`: a new generation of the hot projection from offset 0, switched in with no downtime.

1. Generation N+1 is filled from offset 0 by the same `Projector` and sink code the live worker runs,
   beside the live generation N, which keeps serving and keeps receiving new events. The partitions are
   shared among worker processes, one per CPU (`replay.rebuild_worker`); this process shows their progress.
2. Each partition whose new checkpoint has reached the live one is switched: one Lua script compares the
   two checkpoints and moves the partition's pointer (atomically, per partition, so a reader never sees a
   generation older than the one it saw before).
3. The live worker's next batch for a switched partition is refused by its generation guard; it follows
   the pointer, re-reads its checkpoint from the new generation and carries on there.
4. Once every partition is switched, and after a grace period in which every gateway has moved on (they
   re-read pointers every 0.5 s), the retired generation is dropped.

Interrupted anywhere, the live generation is untouched: unswitched partitions still read it. Running the
command again resumes the unfinished generation from its own checkpoints (``--restart`` starts over).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections.abc import Collection

import redis.asyncio as aioredis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from ams.settings import Settings
from projections.feed import Window
from projections.redis_layout import RedisLayout
from replay import rebuild_worker
from replay.rebuild_state import GRACE_SECONDS, RebuildState, recorded, save_state
from replay.rebuild_worker import WorkerProgress

console = Console()
SAVE_SECONDS = 1.0


class RebuildFailed(RuntimeError):
    """A rebuild worker failed; the live generation is untouched and the rebuild can be run again."""


def default_workers(settings: Settings) -> int:
    return max(1, min(os.cpu_count() or 1, settings.partitions))


async def rebuild_redis(settings: Settings, *, restart: bool = False, quiet: bool = False,
                        workers: int | None = None, window: Window | None = None) -> RebuildState:
    layout = RedisLayout(settings.redis_prefix)
    client = aioredis.from_url(settings.redis_url)
    try:
        live = await _pointers(client, layout, settings.partitions)
        building = max(live.values()) + 1
        if restart:
            await drop_generation(client, layout.at(building), quiet=quiet)
        state = RebuildState("redis", building, workers=min(workers or default_workers(settings), settings.partitions))
        async with recorded(client, layout, state):
            await _build(settings, client, layout, state, quiet, window or Window())
            state.state = "dropping"
            await save_state(client, layout, state)
            await asyncio.sleep(GRACE_SECONDS)
            for retired in sorted(set(live.values())):
                await drop_generation(client, layout.at(retired), quiet=quiet)
        return state
    finally:
        await client.aclose()


async def _build(settings: Settings, client: aioredis.Redis, layout: RedisLayout, state: RebuildState,
                 quiet: bool, window: Window) -> None:
    """Run the workers (each a process with a share of the partitions) and show their combined progress."""
    context = multiprocessing.get_context("spawn")  # never fork a process that runs an event loop
    queue = context.Queue()
    shares = [list(range(settings.partitions))[worker::state.workers] for worker in range(state.workers)]
    processes = [context.Process(target=rebuild_worker.run, name=f"ams-rebuild-{worker}", daemon=True,
                                 args=(settings, state.generation, share, worker, queue.put, window))
                 for worker, share in enumerate(shares)]
    started, saved = time.monotonic(), 0.0
    reports = {worker: WorkerProgress(worker) for worker in range(state.workers)}
    for process in processes:
        process.start()
    try:
        with Progress(TextColumn("rebuilding redis generation {task.fields[generation]}"), BarColumn(),
                      MofNCompleteColumn(), TaskProgressColumn(), TextColumn("{task.fields[rate]} ev/s"),
                      TimeRemainingColumn(), console=console, disable=quiet) as bar:
            task = bar.add_task("rebuild", total=None, generation=state.generation, rate="-")
            while not all(report.done for report in reports.values()):
                while not queue.empty():
                    report: WorkerProgress = queue.get_nowait()
                    if report.error is not None:
                        raise RebuildFailed(f"rebuild worker {report.worker} (partitions "
                                            f"{shares[report.worker]}) failed: {report.error}")
                    reports[report.worker] = report
                for worker, process in enumerate(processes):
                    if process.exitcode not in (None, 0) or (process.exitcode == 0 and queue.empty()
                                                             and not reports[worker].done):
                        raise RebuildFailed(f"rebuild worker {worker} (partitions {shares[worker]}) exited "
                                            f"with code {process.exitcode}; run the rebuild again to resume")
                _update(state, reports.values(), time.monotonic() - started)
                bar.update(task, completed=state.applied, total=state.total, rate=f"{state.events_per_second:,.0f}")
                if time.monotonic() - saved > SAVE_SECONDS:
                    await save_state(client, layout, state)
                    saved = time.monotonic()
                await asyncio.sleep(0.05)
            _update(state, reports.values(), time.monotonic() - started)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join(5)


def _update(state: RebuildState, reports: Collection[WorkerProgress], elapsed: float) -> None:
    state.applied = sum(report.applied for report in reports)
    state.total = state.applied + sum(report.behind for report in reports)
    state.switched = sorted(partition for report in reports for partition in report.switched)
    state.events_per_second = state.applied / max(elapsed, 1e-6)
    state.eta_seconds = (state.total - state.applied) / state.events_per_second if state.events_per_second else None


async def _pointers(client: aioredis.Redis, layout: RedisLayout, partitions: int) -> dict[int, int]:
    values = await client.mget([layout.pointer(partition) for partition in range(partitions)])
    return {partition: int(value or 0) for partition, value in enumerate(values)}


async def drop_generation(client: aioredis.Redis, layout: RedisLayout, *, quiet: bool = False) -> int:
    """Delete every key of one generation, in batches of UNLINK, with a progress count."""
    dropped = 0
    with Progress(TextColumn(f"dropping generation {layout.generation}"), TextColumn("{task.completed} keys"),
                  console=console, disable=quiet) as bar:
        task = bar.add_task("drop", total=None)
        async for keys in _scan_batches(client, layout.generation_pattern()):
            dropped += await client.unlink(*keys)
            bar.update(task, completed=dropped)
    return dropped


async def _scan_batches(client: aioredis.Redis, pattern: str, size: int = 1000):  # type: ignore[no-untyped-def]
    cursor = 0
    while True:
        cursor, keys = await client.scan(cursor, match=pattern, count=size)
        if keys:
            yield keys
        if cursor == 0:
            return
