"""What every benchmark shares: latency summaries, bounded concurrent loops with a progress bar, a table."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

console = Console()


@dataclass(frozen=True)
class Run:
    name: str
    latencies: list[float]  # seconds, one per operation
    elapsed: float  # wall time of the whole run

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def per_second(self) -> float:
        return len(self.latencies) / self.elapsed

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies) * 1000

    @property
    def p99_ms(self) -> float:
        return self.percentile(0.99) * 1000


async def measure(name: str, operation: Callable[[int], Awaitable[object]], count: int, concurrency: int) -> Run:
    """Run ``operation(i)`` for i in range(count), ``concurrency`` at a time, timing each."""
    latencies: list[float] = []
    next_index = 0
    with Progress(TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task(name, total=count)

        async def worker() -> None:
            nonlocal next_index
            while next_index < count:
                index = next_index
                next_index += 1
                started = time.perf_counter()
                await operation(index)
                latencies.append(time.perf_counter() - started)
                progress.advance(task)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return Run(name, latencies, elapsed)


class Measured(Protocol):
    """One row of a report: a Run measured here, or an HTTP run measured by wrk."""

    @property
    def name(self) -> str: ...
    @property
    def count(self) -> int: ...
    @property
    def per_second(self) -> float: ...
    @property
    def p50_ms(self) -> float: ...
    @property
    def p99_ms(self) -> float: ...


def report(title: str, runs: Sequence[Measured], ratios: list[tuple[str, float]]) -> None:
    table = Table(title=title)
    for column in ("what", "ops", "ops/s", "p50 ms", "p99 ms"):
        table.add_column(column, justify="right" if column != "what" else "left")
    for run in runs:
        table.add_row(run.name, str(run.count), f"{run.per_second:,.0f}", f"{run.p50_ms:.2f}",
                      f"{run.p99_ms:.2f}")
    console.print(table)
    ratio_table = Table(title="ratios (same machine, same run)")
    ratio_table.add_column("comparison")
    ratio_table.add_column("ratio", justify="right")
    for label, value in ratios:
        ratio_table.add_row(label, f"{value:.2f}x")
    console.print(ratio_table)
