"""The local stack's gateway processes: ``gateway-1`` … ``gateway-N`` (N = ``AMS_GATEWAY_PROCESSES``).

They share the gateway's port (`queries.server`), so one address serves them all; each is otherwise an
independent gateway with its own Kafka transactional id, pid file and log. Each also answers on its own Unix
socket under ``<home>/run``, where the launcher probes that one process (on the shared port the kernel
picks the process). Their Prometheus metrics are written to one directory (prometheus_client's
multiprocess mode), so ``/metrics`` on the shared port sums the counters of them all, whichever answers.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from ams import credentials
from ams.settings import Settings
from compose import readiness
from compose.process import ManagedProcess, pid_alive

GROUP = "gateway"  # the name that addresses every gateway process at once (`ams down gateway`)


def name(number: int) -> str:
    return f"{GROUP}-{number}"


def control_socket(settings: Settings, number: int) -> Path:
    return settings.home / "run" / f"{name(number)}.sock"


def metrics_dir(settings: Settings) -> Path:
    return settings.home / "run" / "gateway-metrics"


def process_settings(settings: Settings, number: int) -> Settings:
    """Gateway process ``number``'s settings: its instance name (its Kafka transactional id) is its own, as two
    producers with one transactional id fence each other."""
    return replace(settings, gateway_instance=f"{settings.gateway_instance}-{number}")


async def probe(settings: Settings, number: int) -> None:
    await readiness.http_ok("http://gateway/readyz", uds=control_socket(settings, number))


def start(number: int, settings: Settings, process: ManagedProcess) -> None:
    """Start gateway process ``number``. When no other gateway process runs, the group's metrics start afresh
    (as a restarted single process's would); otherwise its counters add to those of its predecessors."""
    metrics = metrics_dir(settings)
    others = [replace(process, name=name(other)) for other in range(1, settings.gateway_processes + 1)]
    if not any(other.pid() is not None for other in others if other.name != process.name):
        shutil.rmtree(metrics, ignore_errors=True)
    metrics.mkdir(parents=True, exist_ok=True)
    for gauges in metrics.glob("gauge_live*_*.db"):  # of a killed process, which could not remove them itself
        if not pid_alive(int(gauges.stem.rsplit("_", 1)[1])):
            gauges.unlink(missing_ok=True)
    process.start([sys.executable, "-m", "ams.cli", "gateway", "--process", str(number)],
                  env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics), "AMS_PRINCIPAL": credentials.GATEWAY})
