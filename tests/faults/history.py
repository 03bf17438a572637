"""What the workload did: every command it sent and every read it made, as the checker needs them.

A command is one logical request with one ``Idempotency-Key``, however many attempts it took. It is
*acknowledged* when the server took a position on it (200, 202 or 409), *refused* when the server
answered another 4xx, and *indeterminate* when its retries ran out (the checker then allows it to be in
the log or not, but never applied twice).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from commands.keys import Position


class Kind(StrEnum):
    PUT = "put"
    CAS = "cas"  # PUT or DELETE with If-Match: the version of a previous read
    CREATE = "create"  # PUT with If-None-Match: *
    DELETE = "delete"
    PATCH = "patch"
    BATCH = "batch"
    STREAM = "stream"
    INVALID = "invalid"  # a command the gateway must refuse with a 4xx


class Ack(StrEnum):
    ACKNOWLEDGED = "acknowledged"
    REFUSED = "refused"
    INDETERMINATE = "indeterminate"


@dataclass
class Operation:
    """One event a command should put in the log: a single write has one, a batch has several."""

    command_id: str  # the event's command_id: the Idempotency-Key, or ``<key>#<index>`` in a batch
    event_type: str  # kv.put, kv.delete, kv.patch, stream.append
    key: str  # a key, or a stream name for stream.append
    position: Position | None = None  # where the acknowledged answer says it is
    status: str | None = None  # accepted, duplicate, rejected (strong) or pending (async)
    version: int | None = None  # the version the answer names (accepted or duplicate)


@dataclass
class Command:
    command_id: str
    writer: int
    seq: int
    kind: Kind
    strong: bool
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    operations: list[Operation]
    attempts: int = 0
    http_status: int | None = None
    ack: Ack = Ack.INDETERMINATE
    errors: list[str] = field(default_factory=list)
    response: Any = None
    hung: int = 0  # attempts the client gave up on because no answer came in time
    started: float = 0.0
    finished: float = 0.0

    def describe(self) -> str:
        return f"{self.method} {self.path} [{self.kind}{'' if self.strong else ', async'}] id={self.command_id}"


@dataclass
class Read:
    """A GET made with the writer's session token: it must show the state of the log at or after the token."""

    writer: int
    key: str
    token: dict[int, int]
    status: int
    version: int | None
    value: Any


@dataclass
class History:
    seed: int
    tenant: str
    commands: list[Command] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)

    def acknowledged(self) -> list[Command]:
        return [command for command in self.commands if command.ack is Ack.ACKNOWLEDGED]
