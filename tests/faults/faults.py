"""Faults injected into the real processes of the local stack while the workload runs, and the scenarios.

Each fault's `inject` does the damage *and* the recovery (restart, SIGCONT), so the stack is whole again
when it returns. A scenario is a list of faults injected one after another until the run's time is up
(the mixed scenario picks among all of them with the run's seed), or each once in an order the seed
shuffles (the tour, which the default test run makes). A new fault is a class with a ``name`` and an
``inject``, added to the list in `scenarios()`.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Protocol

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from ams.settings import Settings
from commands.envelope import ENVELOPE_VERSION, PUT, Event, encode, now_ms, uuid7
from commands.keys import Position, kafka_key, partition_for
from compose import process as processes
from compose.local import LocalStack
from tests.faults.checker import Poison
from tests.faults.history import Kind, Operation
from tests.faults.workload import Workload

# The worker's fault-injection point (projections/projector.py): exit right after the N-th sink apply.
EXIT_AFTER_APPLY = "AMS_FAULT_EXIT_AFTER_APPLY"


@dataclass
class FaultContext:
    stack: LocalStack
    settings: Settings
    tenant: str
    rng: random.Random
    workload: Workload
    poison: list[Poison] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # a fault that did not happen as it should
    began: float = field(default_factory=time.monotonic)

    def note(self, what: str) -> None:
        self.log.append(f"{time.monotonic() - self.began:5.1f}s {what}")

    async def kill(self, name: str, signum: int = signal.SIGKILL) -> None:
        """Signal the component (or each of the group, e.g. every gateway process) and wait until it is gone."""
        for component in self.stack.named(name):
            await asyncio.to_thread(self.stack.stop, component, signum)

    async def ensure(self, name: str) -> None:
        """Start the component (or each of the group) if it is not running, and wait until it answers its probe."""
        await asyncio.to_thread(self.stack.start, name)


class Fault(Protocol):
    name: str

    async def inject(self, ctx: FaultContext) -> None: ...


@dataclass
class KillProjector:
    """SIGKILL the Redis projection worker mid-stream, then start it again after ``down`` seconds (past the
    gateway's write timeout, strong writes answer 504 and are retried while the log keeps growing)."""

    down: tuple[float, float] = (0.0, 1.0)
    name: str = "projector-kill"

    async def inject(self, ctx: FaultContext) -> None:
        await ctx.kill("projector-redis")
        down = ctx.rng.uniform(*self.down)
        ctx.note(f"projector SIGKILLed, down for {down:.1f}s")
        await asyncio.sleep(down)
        await ctx.ensure("projector-redis")
        ctx.note("projector restarted")


class ExitAfterSinkWrite:
    """Restart the worker with AMS_FAULT_EXIT_AFTER_APPLY=N: it dies right after its N-th sink write, before it
    records anything else (its in-memory checkpoint, Kafka's offset commit); then start it normally."""

    name = "projector-exit-after-apply"

    async def inject(self, ctx: FaultContext) -> None:
        applies = ctx.rng.randint(1, 4)
        process = ctx.stack.process("projector-redis")
        await ctx.kill("projector-redis")
        pid = process.start([sys.executable, "-m", "ams.cli", "project", "redis"],
                            env={**os.environ, EXIT_AFTER_APPLY: str(applies)})
        child = processes._children[pid]  # the Popen of the process just started: wait() gives its status
        try:
            code: int | None = await asyncio.to_thread(child.wait, 90)
        except subprocess.TimeoutExpired:
            code = None
        if code != 137:
            await ctx.kill("projector-redis")
            ctx.problems.append(f"the projector started with {EXIT_AFTER_APPLY}={applies} did not exit with 137 "
                                f"within 90s (exit status: {code}); its log: {process.log_path}")
        ctx.note(f"projector exited with {code} right after its sink write #{applies}")
        await ctx.ensure("projector-redis")
        ctx.note("projector restarted")


class KillGateway:
    """SIGKILL every gateway process with requests in flight; clients retry with the same idempotency key."""

    name = "gateway-kill"

    async def inject(self, ctx: FaultContext) -> None:
        await ctx.kill("gateway")
        ctx.note("gateway SIGKILLed")
        await asyncio.sleep(ctx.rng.uniform(0, 1))
        await ctx.ensure("gateway")
        ctx.note("gateway restarted")


@dataclass
class PauseBroker:
    """SIGSTOP the Kafka broker for longer than the clients' timeouts, then SIGCONT."""

    seconds: tuple[float, float] = (11.0, 11.0)
    name: str = "broker-pause"

    async def inject(self, ctx: FaultContext) -> None:
        pause = ctx.rng.uniform(*self.seconds)
        process = ctx.stack.process("kafka")
        process.send_signal(signal.SIGSTOP)
        ctx.note(f"broker SIGSTOPped for {pause:.0f}s")
        try:
            await asyncio.sleep(pause)
        finally:
            process.send_signal(signal.SIGCONT)
        ctx.note("broker SIGCONTed")


class RestartBroker:
    """SIGKILL the Kafka broker, then start it again (an unclean shutdown: it recovers its log)."""

    name = "broker-restart"

    async def inject(self, ctx: FaultContext) -> None:
        await ctx.kill("kafka")
        ctx.note("broker SIGKILLed")
        await asyncio.sleep(ctx.rng.uniform(0, 2))
        await ctx.ensure("kafka")
        ctx.note("broker restarted")


class FlushRedis:
    """FLUSHALL: the hot projection loses everything at once, checkpoints included."""

    name = "redis-flushall"

    async def inject(self, ctx: FaultContext) -> None:
        client = aioredis.from_url(ctx.settings.redis_url)
        try:
            await client.flushall()
        finally:
            await client.aclose()
        ctx.note("redis FLUSHALL")


class RestartRedis:
    """SIGKILL Redis and start it again: it reloads its append-only file (fsync every second, so it may
    come back up to a second behind, checkpoints and records together)."""

    name = "redis-restart"

    async def inject(self, ctx: FaultContext) -> None:
        await ctx.kill("redis")
        ctx.note("redis SIGKILLed")
        await asyncio.sleep(ctx.rng.uniform(0, 1))
        await ctx.ensure("redis")
        ctx.note("redis restarted")


class RestartPostgres:
    """PostgreSQL's immediate shutdown (SIGQUIT to the postmaster: no checkpoint, crash recovery on start)."""

    name = "postgres-restart"

    async def inject(self, ctx: FaultContext) -> None:
        await ctx.kill("postgres", signal.SIGQUIT)
        ctx.note("postgres stopped (immediate)")
        await asyncio.sleep(ctx.rng.uniform(0, 2))
        await ctx.ensure("postgres")
        ctx.note("postgres restarted")


class ProducePoison:
    """Records no projection can apply, produced straight into the log on a partition the workload writes:
    bad bytes, an unknown envelope version, and a valid envelope whose value is over the value limit.
    Then a strong write on the same partition, which must be applied: the partition keeps moving."""

    name = "poison"

    async def inject(self, ctx: FaultContext) -> None:
        settings, tenant = ctx.settings, ctx.tenant
        key = ctx.rng.choice(ctx.workload.keys)
        partition = partition_for(kafka_key(tenant, key), settings.partitions)
        oversized = Event(PUT, tenant, key, "x" * (settings.max_value_bytes + 64), id=uuid7(), ts=now_ms(),
                          actor="fault-injector", command_id=f"poison-{uuid.uuid4().hex}")
        records = [
            ("bad bytes", b"\x00\xff\xfe not json"),
            ("unknown envelope version", orjson.dumps({"v": ENVELOPE_VERSION + 41, "type": PUT, "tenant": tenant,
                                                      "key": key, "data": 1})),
            ("oversized value", encode(oversized)),
        ]
        # Compressed, the oversized record fits the broker's message size limit whatever the topic allows.
        producer = AIOKafkaProducer(**settings.kafka.client_options(), acks="all",
                                    compression_type="gzip", max_request_size=32 << 20)
        await producer.start()
        try:
            for kind, value in records:
                sent = await producer.send_and_wait(settings.events_topic, value, key=kafka_key(tenant, key),
                                                    partition=partition)
                ctx.poison.append(Poison(kind, Position(sent.partition, sent.offset)))
        finally:
            await producer.stop()
        ctx.note(f"3 poison records into partition {partition}")
        canary = next(f"canary/{n}" for n in range(10_000)
                      if partition_for(kafka_key(tenant, f"canary/{n}"), settings.partitions) == partition)
        command = ctx.workload.command(
            writer=-1, kind=Kind.PUT, method="PUT", path=f"/v1/kv/{canary}", body=orjson.dumps({"after": "poison"}),
            operations=[Operation("", PUT, canary)],
        )
        await ctx.workload.one(command)
        ctx.note(f"write after the poison answered {command.http_status}")


@dataclass(frozen=True)
class Scenario:
    name: str
    faults: tuple[Fault, ...]
    first_after: float = 1.5  # seconds of workload before the first fault
    between: float = 3.0  # seconds of workload between one fault's recovery and the next fault
    once: bool = False  # each fault once, in an order the seed shuffles, however long that takes


def scenarios(long_run: bool) -> dict[str, Scenario]:
    """Every scenario: one per fault, all of them mixed, and the tour of each fault once."""
    # Short runs pause the broker longer than the gateway's Kafka timeout plus its projection wait (the
    # longest a write may take to answer); long runs also beyond aiokafka's own request timeout (40 s).
    pause = PauseBroker((16.0, 45.0) if long_run else (11.0, 11.0))
    each: list[Fault] = [KillProjector((0.0, 8.0)), ExitAfterSinkWrite(), KillGateway(), pause, RestartBroker(),
                         FlushRedis(), RestartRedis(), RestartPostgres(), ProducePoison()]
    found = {fault.name: Scenario(fault.name, (fault,)) for fault in each}
    found["mixed"] = Scenario("mixed", tuple(each), first_after=1.0, between=2.0 if long_run else 1.0)
    found["tour"] = Scenario("tour", (KillProjector((0.0, 2.0)), *each[1:]), first_after=1.0, between=1.0, once=True)
    return found
