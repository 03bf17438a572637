"""Throughput of the PostgreSQL projection against asyncpg's own COPY of the same rows, in one run.

    python -m bench.postgres_projection [--events 50000] [--keys 2000] [--batch 1000]

Needs a running PostgreSQL (`ams up`, or AMS_POSTGRES_DSN). Both sides run in fresh schemas that are
dropped afterwards, so the live projection is never touched:

1. **sink**: `PostgresSink.apply` in batches of ``--batch`` events, as the projector calls it: one
   transaction per batch that locks the checkpoint, reads the current records, folds, upserts
   ``kv_current``, COPYs ``kv_history`` and moves the checkpoint with a NOTIFY.
2. **copy**: `copy_records_to_table` of exactly the ``kv_history`` rows the sink wrote, into an identical
   (indexed) table, in batches of the same size, one transaction per batch: the floor for writing them.

The ratio sink/copy says how much of the raw COPY speed the projection keeps while doing its work.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ams.settings import get_settings
from commands.envelope import DELETE, PATCH, PUT, Event
from projections.postgres import HISTORY_COLUMNS, PostgresSink
from projections.postgres_schema import create_pool, migrate
from projections.sink import Positioned

console = Console()


def make_events(count: int, keys: int, tenants: int, seed: int = 7) -> list[Positioned]:
    """Puts, merge patches, deletes and conditional writes (some of which lose) over ``keys`` keys."""
    rng = random.Random(seed)
    start = 1_700_000_000_000
    versions: dict[tuple[str, str], int] = {}
    events = []
    for offset in range(count):
        tenant, key = f"bench{rng.randrange(tenants)}", f"agent/{rng.randrange(keys)}/state"
        roll = rng.random()
        common: dict[str, Any] = {"id": str(uuid.UUID(int=rng.getrandbits(128))), "ts": start + offset,
                                  "actor": "bench"}
        if roll < 0.75:
            event = Event(PUT, tenant, key, {"step": offset, "notes": "x" * rng.randrange(10, 200)}, **common)
        elif roll < 0.87:
            event = Event(PATCH, tenant, key, {"seen": offset, "flags": {"hot": roll < 0.8}}, **common)
        elif roll < 0.92:
            event = Event(DELETE, tenant, key, **common)
        else:  # a conditional write; about half of them name a stale version and lose
            known = versions.get((tenant, key), 0)
            event = Event(PUT, tenant, key, {"cas": offset}, if_version=known if rng.random() < 0.5 else known + 1,
                          **common)
        versions[(tenant, key)] = offset
        events.append(Positioned(event, offset))
    return events


def progress() -> Progress:
    return Progress(TextColumn("{task.description:<6}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]:>10}"), TimeRemainingColumn(), console=console)


async def timed_batches(
    total: int, batch: int, run: Callable[[int, int], Awaitable[None]], bar: Progress, name: str
) -> float:
    task = bar.add_task(name, total=total, rate="")
    began = time.perf_counter()
    for start in range(0, total, batch):
        await run(start, min(start + batch, total))
        done = min(start + batch, total)
        bar.update(task, completed=done, rate=f"{done / (time.perf_counter() - began):,.0f}/s")
    return time.perf_counter() - began


async def bench(events_count: int, keys: int, batch: int, tenants: int) -> None:
    settings = get_settings()
    sink_schema, copy_schema = f"bench_sink_{uuid.uuid4().hex[:8]}", f"bench_copy_{uuid.uuid4().hex[:8]}"
    events = make_events(events_count, keys, tenants)
    sink = PostgresSink(settings.postgres_dsn, sink_schema, settings.partitions, projection="bench")
    copy_pool = await create_pool(settings.postgres_dsn, copy_schema, min_size=1, max_size=1)
    try:
        await sink.start()
        async with copy_pool.acquire() as connection:
            await migrate(connection, copy_schema)
        console.print(f"PostgreSQL at {settings.postgres_dsn.rsplit('@', 1)[-1]}: {events_count:,} events over "
                      f"{keys:,} keys x {tenants} tenants, batches of {batch:,}")
        with progress() as bar:
            async def apply(start: int, end: int) -> None:
                await sink.apply(0, events[start:end], through=end - 1, expected=start - 1)

            sink_seconds = await timed_batches(events_count, batch, apply, bar, "sink")
            pool = await sink.pool()
            columns = ", ".join(HISTORY_COLUMNS)
            rows = [tuple(row) for row in await pool.fetch(f"SELECT {columns} FROM kv_history ORDER BY log_offset")]

            async def copy(start: int, end: int) -> None:
                async with copy_pool.acquire() as connection, connection.transaction():
                    await connection.copy_records_to_table("kv_history", records=rows[start:end],
                                                           columns=HISTORY_COLUMNS)

            copy_seconds = await timed_batches(len(rows), batch, copy, bar, "copy")
        report(events_count, sink_seconds, len(rows), copy_seconds)
    finally:
        await sink.close()
        async with copy_pool.acquire() as connection:
            for schema in (sink_schema, copy_schema):
                await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await copy_pool.close()


def report(events: int, sink_seconds: float, rows: int, copy_seconds: float) -> None:
    sink_rate, copy_rate = events / sink_seconds, rows / copy_seconds
    table = Table("path", "rows", "seconds", "rows/s")
    table.add_row("PostgresSink.apply (events)", f"{events:,}", f"{sink_seconds:.2f}", f"{sink_rate:,.0f}")
    table.add_row("copy_records_to_table (kv_history rows)", f"{rows:,}", f"{copy_seconds:.2f}", f"{copy_rate:,.0f}")
    console.print(table)
    console.print(f"The projection applies events at [bold]{sink_rate / copy_rate:.0%}[/bold] of the rate at which "
                  f"asyncpg COPYs the same history rows (ratio {sink_rate / copy_rate:.2f}).")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.postgres_projection", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=50_000, help="events to project (default 50000)")
    parser.add_argument("--keys", type=int, default=2_000, help="distinct keys per tenant (default 2000)")
    parser.add_argument("--tenants", type=int, default=4, help="tenants (default 4)")
    parser.add_argument("--batch", type=int, default=1_000, help="events per batch, as the worker (default 1000)")
    args = parser.parse_args()
    if min(args.events, args.keys, args.tenants, args.batch) < 1:
        parser.error("--events, --keys, --tenants and --batch must be at least 1")
    asyncio.run(bench(args.events, args.keys, args.batch, args.tenants))


if __name__ == "__main__":
    main()
