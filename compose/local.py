"""The local stack: real Kafka, Redis and PostgreSQL processes, then the AMS projectors and gateway.

`ams up` is idempotent: a component whose process already runs and answers its probe is reused.
`ams down` stops exactly what pid files under ``<home>/run`` name, i.e. what `ams up` started.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

from ams import credentials
from ams.settings import Settings
from compose import gateways, kafka, postgres, readiness, redis_server, security
from compose.process import ManagedProcess
from compose.system import ensure_packages

PROJECTIONS = ("redis", "postgres", "embedder", "milvus")


@dataclass(frozen=True)
class Component:
    name: str
    address: str
    start: Callable[[Settings, ManagedProcess], None]
    probe: Callable[[], Awaitable[None]]
    stop_signal: int = signal.SIGTERM
    start_timeout: float = 90.0
    group: str | None = None  # a name that addresses this component with others (`ams down gateway`)
    # Run once it answers its probe (each time `ams up` finds it): gives the principals their rights there.
    secure: Callable[[], Awaitable[None]] | None = None


def _ams_process(argv: list[str], principal: str) -> Callable[[Settings, ManagedProcess], None]:
    def start(settings: Settings, process: ManagedProcess) -> None:
        process.start([sys.executable, "-m", "ams.cli", *argv], env={**os.environ, "AMS_PRINCIPAL": principal})

    return start


def _milvus_lite(settings: Settings, process: ManagedProcess) -> None:
    """Milvus Lite locks its data to one process, so `ams up` serves it to the worker and the gateways."""
    process.start(["nice", "-n", str(settings.background_nice), sys.executable, "-m", "milvus_lite", "server",
                   "--data-dir", settings.milvus_uri, "--host", "127.0.0.1", "--port", str(settings.milvus_port)])


def infrastructure(settings: Settings) -> list[Component]:
    milvus = [
        Component("milvus-lite", settings.milvus_endpoint, _milvus_lite, partial(readiness.milvus_list, settings),
                  stop_signal=signal.SIGINT)  # its graceful shutdown
    ] if settings.milvus_is_lite else []
    return [
        Component(
            "kafka", settings.kafka_bootstrap, kafka.start, partial(readiness.kafka_round_trip, settings),
            secure=partial(security.secure_kafka, settings),
        ),
        Component("redis", security.redacted(settings.redis_url), redis_server.start,
                  partial(readiness.redis_ping, settings)),
        Component(
            "postgres",
            security.redacted(settings.postgres_dsn),
            postgres.start,
            partial(readiness.postgres_select, settings),
            stop_signal=signal.SIGINT,  # PostgreSQL's "fast" shutdown
            secure=partial(security.secure_postgres, settings, postgres.DATABASE),
        ),
        *milvus,
    ]


def services(settings: Settings) -> list[Component]:
    projectors = [
        Component(
            f"projector-{name}",
            f"http://127.0.0.1:{settings.projector_metrics_port + index}/metrics",
            _ams_process(["project", name], credentials.projector(name)),
            partial(readiness.http_ok, f"http://127.0.0.1:{settings.projector_metrics_port + index}/readyz"),
        )
        for index, name in enumerate(PROJECTIONS)
    ]
    gateway_processes = [
        Component(gateways.name(number), settings.gateway_url, partial(gateways.start, number),
                  partial(gateways.probe, settings, number), group=gateways.GROUP)
        for number in range(1, settings.gateway_processes + 1)
    ]
    return [*projectors, *gateway_processes]


class LocalStack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def process(self, name: str) -> ManagedProcess:
        home = self.settings.home
        return ManagedProcess(name, home / "run", home / "logs" / f"{name}.log")

    def component(self, name: str) -> Component:
        """The component called ``name`` (infrastructure or service); KeyError if there is none."""
        for component in self.components():
            if component.name == name:
                return component
        raise KeyError(f"no component named {name!r}")

    def named(self, name: str) -> list[Component]:
        """The components ``name`` addresses: the one of that name, or every one of that group (``gateway``:
        every gateway process); KeyError if none."""
        found = [component for component in self.components() if name in (component.name, component.group)]
        if not found:
            raise KeyError(f"no component named {name!r}")
        return found

    def components(self, with_services: bool = True) -> list[Component]:
        return infrastructure(self.settings) + (services(self.settings) if with_services else [])

    def up(self, with_services: bool = True, quiet: bool = False) -> list[str]:
        """Start what is not running, wait until everything is ready; return the names started."""
        if self.settings.services_given:
            # The environment names Kafka, Redis and PostgreSQL: start none, but make sure the topics exist.
            create_topics = partial(readiness.kafka_topics, self.settings)
            asyncio.run(readiness.wait_until("kafka topics", create_topics, 60))
        else:
            ensure_packages()
        started: list[str] = []
        for component in self.components(with_services):
            if self.settings.services_given and component.name in ("kafka", "redis", "postgres"):
                continue  # the environment names these services: use them, start nothing
            began = time.monotonic()
            if self.ensure(component):
                started.append(component.name)
            if not quiet:
                state = "started" if component.name in started else "running"
                took = time.monotonic() - began
                print(f"  {component.name:<18} {state:<8} {component.address}  ({took:.1f}s)", flush=True)
        return started

    def start(self, name: str) -> list[str]:
        """Make each component ``name`` addresses (see `named`) run and answer its probe; the names started."""
        return [component.name for component in self.named(name) if self.ensure(component)]

    def ensure(self, component: Component) -> bool:
        """Make the component run and answer its probe; True if this call started it."""
        process = self.process(component.name)
        started = False
        if process.pid() is None:
            component.start(self.settings, process)
            started = True
        try:
            asyncio.run(
                readiness.wait_until(
                    component.name, component.probe, component.start_timeout, alive=lambda: process.pid() is not None
                )
            )
        except (RuntimeError, TimeoutError) as error:
            raise SystemExit(
                f"{component.name} did not become ready: {error}\n"
                f"Its log ({process.log_path}) ends with:\n{process.log_tail()}"
            ) from None
        if component.secure is not None:
            asyncio.run(asyncio.wait_for(component.secure(), 60))
        return started

    def down(self, names: list[str] | None = None) -> list[str]:
        """Stop the named components or groups (all, by default), services first; return the names stopped.
        KeyError if a name addresses no component."""
        chosen = None if names is None else {component.name for name in names for component in self.named(name)}
        return [component.name for component in reversed(self.components())
                if (chosen is None or component.name in chosen) and self.stop(component)]

    def stop(self, component: Component, signum: int | None = None) -> bool:
        """Stop the component's process with ``signum`` (default: its own stop signal), waiting until it is
        gone; False if it was not running."""
        return self.process(component.name).stop(signum=component.stop_signal if signum is None else signum)

    def posture(self, name: str) -> str:
        """How the component ``name`` authenticates its clients and protects its traffic."""
        postures = security.posture(self.settings)
        return postures.get(name) or postures[name.split("-", 1)[0]]

    def status(self) -> list[tuple[str, str, str, str]]:
        """(name, state, pid, address) for each component."""
        rows = []
        for component in self.components():
            pid = self.process(component.name).pid()
            if pid is None:
                rows.append((component.name, "stopped", "-", component.address))
                continue
            try:
                asyncio.run(asyncio.wait_for(component.probe(), timeout=5))
                state = "ready"
            except Exception:  # noqa: BLE001 - any failure means "not answering"
                state = "not ready"
            rows.append((component.name, state, str(pid), component.address))
        return rows
