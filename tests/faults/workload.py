"""The workload: concurrent writers through the gateway, over a small key space so that they conflict.

Every command carries its own ``Idempotency-Key``. When an attempt gets no answer (transport error,
timeout) or a 5xx (a killed gateway, a 504 from a slow projection), the writer sends the *same* command
again, same key and body, with backoff, for a bounded time. Every command and every read is recorded in
a `History` for the checker.

The writers' choices come from ``random.Random(f"{seed}/{writer}")``: the same seed replays the same
commands (their interleaving, and so their outcomes, still depend on timing).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from commands.envelope import DELETE, PATCH, PUT, STREAM_APPEND
from commands.keys import Position, format_positions
from tests.faults.history import Ack, Command, History, Kind, Operation, Read

MERGE_PATCH = "application/merge-patch+json"

# How often each kind of command is chosen.
MIX: dict[Kind, int] = {
    Kind.PUT: 24, Kind.CAS: 16, Kind.CREATE: 8, Kind.DELETE: 8, Kind.PATCH: 16,
    Kind.BATCH: 12, Kind.STREAM: 10, Kind.INVALID: 3,
}


@dataclass(frozen=True)
class WorkloadConfig:
    seed: int
    writers: int = 8
    keys: int = 10
    streams: int = 3
    async_share: float = 0.3  # share of commands sent with Prefer: respond-async
    async_writers: int = 2  # writers that send every command with Prefer: respond-async (they never wait
    # for the projection, so they keep writing while it is down, as other clients would)
    client_timeout: float = 15.0  # an attempt without an answer by then counts as hung and is retried
    retry_for: float = 180.0  # a command is retried for this long after its first attempt
    pause: float = 0.0  # think time between a writer's commands


class Workload:
    def __init__(self, base_url: str, token: str, tenant: str, config: WorkloadConfig) -> None:
        self.base_url, self.tenant, self.config = base_url, tenant, config
        self.headers = {"Authorization": f"Bearer {token}"}
        self.history = History(config.seed, tenant)
        self.keys = [f"k{index}" for index in range(config.keys)]
        self.streams = [f"log/s{index}" for index in range(config.streams)]
        self.run_id = f"{config.seed:x}"
        self.in_flight = 0
        self.retries = 0
        self._extra = 0

    async def run(self, stop: asyncio.Event, on_change: Callable[[], None] = lambda: None) -> History:
        """Write until ``stop`` is set, then let every command in flight finish (or run out of retries)."""
        limits = httpx.Limits(max_connections=self.config.writers * 2, max_keepalive_connections=self.config.writers)
        async with httpx.AsyncClient(base_url=self.base_url, headers=self.headers, limits=limits,
                                     timeout=self.config.client_timeout) as client:
            await asyncio.gather(*(self._writer(client, index, stop, on_change)
                                   for index in range(self.config.writers)))
        return self.history

    async def _writer(self, client: httpx.AsyncClient, index: int, stop: asyncio.Event,
                      on_change: Callable[[], None]) -> None:
        rng = random.Random(f"{self.config.seed}/{index}")
        session: dict[int, int] = {}
        seq = 0
        # Async-only writers never read (a read with their token would wait for the projection).
        mix = {kind: weight for kind, weight in MIX.items()
               if index >= self.config.async_writers or kind is not Kind.CAS}
        while not stop.is_set():
            kind = rng.choices(list(mix), weights=list(mix.values()))[0]
            command = await self._build(client, rng, kind, index, seq, session)
            seq += 1
            self.history.commands.append(command)
            self.in_flight += 1
            try:
                await self._execute(client, command, rng, on_change)
            finally:
                self.in_flight -= 1
            for operation in command.operations:
                if operation.position is not None and command.ack is Ack.ACKNOWLEDGED:
                    position = operation.position
                    session[position.partition] = max(session.get(position.partition, -1), position.offset)
            on_change()
            if self.config.pause:
                await asyncio.sleep(self.config.pause)

    def command(self, *, writer: int, kind: Kind, method: str, path: str, body: bytes,
                operations: list[Operation]) -> Command:
        """A strong command outside the writers' loop (the fault injector's own writes)."""
        self._extra += 1
        command_id = f"{self.run_id}-x{self._extra}"
        for index, operation in enumerate(operations):
            operation.command_id = f"{command_id}#{index}" if kind is Kind.BATCH else command_id
        return Command(command_id, writer, self._extra, kind, True, method, path, {"Idempotency-Key": command_id},
                       body, operations)

    async def one(self, command: Command) -> None:
        """Send one command (retried like any other) and record it in the history."""
        self.history.commands.append(command)
        async with httpx.AsyncClient(base_url=self.base_url, headers=self.headers,
                                     timeout=self.config.client_timeout) as client:
            await self._execute(client, command, random.Random(command.command_id), lambda: None)

    # ---- building commands -------------------------------------------------------------------------

    async def _build(self, client: httpx.AsyncClient, rng: random.Random, kind: Kind, writer: int, seq: int,
                     session: dict[int, int]) -> Command:
        command_id = f"{self.run_id}-w{writer}-{seq}"
        strong = writer >= self.config.async_writers and rng.random() >= self.config.async_share
        headers = {"Idempotency-Key": command_id}
        if not strong:
            headers["Prefer"] = "respond-async"
        key = rng.choice(self.keys)
        value = {"w": writer, "s": seq, "r": rng.randrange(1000)}

        def single(method: str, event_type: str, body: Any = None, **extra: str) -> Command:
            path = f"/v1/streams/{key}" if event_type == STREAM_APPEND else f"/v1/kv/{key}"
            raw = b"" if body is None else orjson.dumps(body)
            return Command(command_id, writer, seq, kind, strong, method, path, {**headers, **extra}, raw,
                           [Operation(command_id, event_type, key)])

        if kind is Kind.PUT:
            query = "?ttl=3600" if rng.random() < 0.1 else ""
            command = single("PUT", PUT, value)
            command.path += query
            return command
        if kind is Kind.CAS:
            version = await self._read_version(client, writer, key, session)
            if_match = str(version if version is not None else rng.randrange(1, 10_000))
            if rng.random() < 0.25:
                return single("DELETE", DELETE, **{"If-Match": if_match})
            return single("PUT", PUT, value, **{"If-Match": if_match})
        if kind is Kind.CREATE:
            return single("PUT", PUT, value, **{"If-None-Match": "*"})
        if kind is Kind.DELETE:
            return single("DELETE", DELETE)
        if kind is Kind.PATCH:
            patch = {f"p{rng.randrange(4)}": rng.choice([seq, None, {"n": seq}]), "w": writer}
            return single("PATCH", PATCH, patch, **{"Content-Type": MERGE_PATCH})
        if kind is Kind.STREAM:
            key = rng.choice(self.streams)
            return single("POST", STREAM_APPEND, {"step": seq, "writer": writer})
        if kind is Kind.BATCH:
            return self._batch(rng, command_id, writer, seq, strong, headers)
        return self._invalid(rng, command_id, writer, seq, strong, headers, key)

    def _batch(self, rng: random.Random, command_id: str, writer: int, seq: int, strong: bool,
               headers: dict[str, str]) -> Command:
        operations: list[dict[str, Any]] = []
        expected: list[Operation] = []
        for index in range(rng.randint(2, 5)):
            key = rng.choice(self.keys)
            op = rng.choice(["put", "put", "patch", "delete", "create"])
            if op == "put":
                operations.append({"op": "put", "key": key, "value": {"w": writer, "s": seq, "i": index}})
            elif op == "create":
                operations.append({"op": "put", "key": key, "value": {"created": seq}, "if_absent": True})
            elif op == "patch":
                operations.append({"op": "patch", "key": key, "patch": {f"b{index}": seq}})
            else:
                operations.append({"op": "delete", "key": key})
            event_type = {"put": PUT, "create": PUT, "patch": PATCH, "delete": DELETE}[op]
            expected.append(Operation(f"{command_id}#{index}", event_type, key))
        body = orjson.dumps({"operations": operations})
        return Command(command_id, writer, seq, Kind.BATCH, strong, "POST", "/v1/batch",
                       {**headers, "Content-Type": "application/json"}, body, expected)

    def _invalid(self, rng: random.Random, command_id: str, writer: int, seq: int, strong: bool,
                 headers: dict[str, str], key: str) -> Command:
        """A command the gateway must refuse: it must never reach the log."""
        choice = rng.randrange(4)
        if choice == 0:
            method, path, extra, body = "PUT", f"/v1/kv/{key}?ttl=-1", {}, b"1"
        elif choice == 1:
            method, path, extra, body = "PATCH", f"/v1/kv/{key}", {"Content-Type": MERGE_PATCH}, b"[1]"
        elif choice == 2:
            method, path, extra, body = "PUT", f"/v1/kv/{key}", {"If-Match": "not-a-version"}, b"1"
        else:
            batch = {"operations": [{"op": "put", "key": key, "value": 1}, {"op": "explode", "key": key}]}
            method, path, extra, body = "POST", "/v1/batch", {}, orjson.dumps(batch)
        operations = [Operation(command_id, "", key)]
        if path == "/v1/batch":
            operations = [Operation(f"{command_id}#{index}", "", key) for index in range(2)]
        return Command(command_id, writer, seq, Kind.INVALID, strong, method, path, {**headers, **extra}, body,
                       operations)

    async def _read_version(self, client: httpx.AsyncClient, writer: int, key: str,
                            session: dict[int, int]) -> int | None:
        """GET the key with the writer's session token; record the read; return its version (None: absent)."""
        token = dict(session)
        headers = {"X-AMS-Min-Position": format_positions(token)} if token else {}
        try:
            response = await client.get(f"/v1/kv/{key}", headers=headers)
        except httpx.TransportError:
            return None
        if response.status_code == 200:
            version = int(response.headers["ETag"].strip('"'))
            self.history.reads.append(Read(writer, key, token, 200, version, response.json()))
            return version
        if response.status_code == 404:
            self.history.reads.append(Read(writer, key, token, 404, None, None))
        return None

    # ---- executing commands ------------------------------------------------------------------------

    async def _execute(self, client: httpx.AsyncClient, command: Command, rng: random.Random,
                       on_change: Callable[[], None]) -> None:
        command.started = time.monotonic()
        deadline = command.started + self.config.retry_for
        delay = 0.1
        while True:
            command.attempts += 1
            if command.attempts > 1:
                self.retries += 1
                on_change()
            try:
                response = await client.request(command.method, command.path, headers=command.headers,
                                                content=command.body)
            except httpx.TimeoutException as error:
                command.hung += 1
                command.errors.append(f"attempt {command.attempts}: no answer within "
                                      f"{self.config.client_timeout:g}s ({type(error).__name__})")
            except httpx.TransportError as error:
                command.errors.append(f"attempt {command.attempts}: {type(error).__name__}: {error}")
            else:
                command.http_status = response.status_code
                if response.status_code < 500:
                    self._record_answer(command, response)
                    break
                command.errors.append(f"attempt {command.attempts}: {response.status_code} {response.text[:200]}")
            if time.monotonic() + delay > deadline:
                command.ack = Ack.INDETERMINATE
                break
            await asyncio.sleep(delay * (0.5 + rng.random()))
            delay = min(delay * 2, 2.0)
        command.finished = time.monotonic()

    def _record_answer(self, command: Command, response: httpx.Response) -> None:
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        command.response = body
        if status not in (200, 202, 409):
            command.ack = Ack.REFUSED
            return
        command.ack = Ack.ACKNOWLEDGED
        if status == 409:
            [operation] = command.operations
            operation.status = "rejected"
            operation.position = _position(response.headers.get("X-AMS-Position"))
            return
        if command.kind is Kind.BATCH:
            for operation, result in zip(command.operations, body["results"], strict=True):
                _fill(operation, result)
            return
        [operation] = command.operations
        _fill(operation, body)


def _fill(operation: Operation, result: dict[str, Any]) -> None:
    operation.position = _position(result.get("position"))
    operation.status = result.get("status")
    operation.version = result.get("version")


def _position(token: str | None) -> Position | None:
    if not token:
        return None
    partition, _, offset = token.partition(":")
    return Position(int(partition), int(offset))
