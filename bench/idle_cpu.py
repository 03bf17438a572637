"""What an idle stack costs: CPU time of AMS's own processes (gateways, projection workers) with no traffic.

The processes are those the launcher started (pid files under ``<home>/run``, one per service of
compose/local.py) and every process below them. CPU time is utime + stime from /proc/<pid>/stat, read
before and after the interval; a process that ends meanwhile counts what it had used when last seen.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from ams.settings import Settings
from compose.local import LocalStack, services

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class IdleCpu:
    seconds: float
    percent_of_a_core: dict[str, float]  # per process, named service[/pid of a child]

    @property
    def total(self) -> float:
        return sum(self.percent_of_a_core.values())


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds used) of a process, or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS


def ams_processes(settings: Settings) -> dict[int, str]:
    """pid -> name of every running AMS service process and its descendants."""
    stack = LocalStack(settings)
    named = {pid: component.name for component in services(settings)
             if (pid := stack.process(component.name).pid()) is not None}
    parents = {pid: stat[0] for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
               if (stat := _stat(pid)) is not None}
    found = dict(named)
    added = True
    while added:
        children = {pid: f"{found[parent]}/{pid}" for pid, parent in parents.items()
                    if parent in found and pid not in found}
        found.update(children)
        added = bool(children)
    return found


def measure_idle(settings: Settings, seconds: float) -> IdleCpu:
    """Per-process CPU use over ``seconds``, as a percentage of one core. SystemExit if no AMS process runs."""
    processes = ams_processes(settings)
    if not processes:
        raise SystemExit("no AMS service process runs (gateway, projectors): start the stack with `ams up`")
    before = {pid: used for pid in processes if (used := _cpu(pid)) is not None}
    began = time.monotonic()
    last = dict(before)
    while (left := began + seconds - time.monotonic()) > 0:
        time.sleep(min(1.0, left))
        last.update({pid: used for pid in before if (used := _cpu(pid)) is not None})
    elapsed = time.monotonic() - began
    return IdleCpu(elapsed, {processes[pid]: 100 * (last[pid] - used) / elapsed for pid, used in before.items()})


def _cpu(pid: int) -> float | None:
    found = _stat(pid)
    return None if found is None else found[1]
