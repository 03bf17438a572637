"""What the client returns and what a batch is made of: small frozen dataclasses, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Outcomes a write can answer with (``rejected`` only appears per operation in a batch).
ACCEPTED, DUPLICATE, PENDING, REJECTED = "accepted", "duplicate", "pending", "rejected"


def _split(position: str) -> tuple[int, int]:
    partition, _, offset = position.partition(":")
    return int(partition), int(offset)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """The answer to a write.

    ``status`` is ``"accepted"`` (applied; ``version`` is the key's new version), ``"duplicate"`` (an
    earlier command with the same idempotency key was applied; ``version`` is its version) or
    ``"pending"`` (``wait=False``: in the log, not yet applied; ``version`` is None). ``position`` is the
    event's consistency token ``"partition:offset"``. For a stream append, ``key`` is the stream's name.
    """

    key: str
    status: str
    position: str
    event_id: str
    version: int | None = None
    message: str | None = None

    @property
    def partition(self) -> int:
        return _split(self.position)[0]

    @property
    def offset(self) -> int:
        return _split(self.position)[1]

    @property
    def pending(self) -> bool:
        return self.status == PENDING


@dataclass(frozen=True, slots=True)
class Versioned:
    """A value and its version (the log offset of the key's last accepted event: pass it as ``if_version``)."""

    value: Any
    version: int


@dataclass(frozen=True, slots=True)
class KeyInfo:
    key: str
    version: int


@dataclass(frozen=True, slots=True)
class KeyPage:
    items: list[KeyInfo]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class StreamPage:
    """Observations of a stream in order; pass ``next`` as ``after`` to read on (None: nothing more yet)."""

    items: list[Any]
    next: Any


@dataclass(frozen=True, slots=True)
class OpResult:
    """The outcome of one operation of a batch (``status`` may be ``"rejected"``, with ``reason``)."""

    key: str
    status: str
    position: str
    version: int | None = None
    reason: str | None = None
    op: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != REJECTED


@dataclass(frozen=True, slots=True)
class BatchResult:
    """The outcomes of a batch, in the order of its operations; ``positions`` is its consistency token.

    Conditions are decided per operation, so a batch answers 200 even when some conditional operations
    lost: check ``ok`` or ``rejected``.
    """

    results: list[OpResult]
    positions: str

    @property
    def ok(self) -> bool:
        return all(result.ok for result in self.results)

    @property
    def rejected(self) -> list[OpResult]:
        return [result for result in self.results if not result.ok]


@dataclass(frozen=True, slots=True)
class Put:
    """A batch operation: store ``value`` under ``key``."""

    key: str
    value: Any
    if_version: int | None = None
    if_absent: bool = False
    ttl: float | None = None

    def to_json(self) -> dict[str, Any]:
        operation: dict[str, Any] = {"op": "put", "key": self.key, "value": self.value}
        if self.if_version is not None:
            operation["if_version"] = self.if_version
        if self.if_absent:
            operation["if_absent"] = True
        if self.ttl is not None:
            operation["ttl"] = self.ttl
        return operation


@dataclass(frozen=True, slots=True)
class Delete:
    """A batch operation: delete ``key``."""

    key: str
    if_version: int | None = None

    def to_json(self) -> dict[str, Any]:
        operation: dict[str, Any] = {"op": "delete", "key": self.key}
        if self.if_version is not None:
            operation["if_version"] = self.if_version
        return operation


@dataclass(frozen=True, slots=True)
class Patch:
    """A batch operation: merge ``patch`` (RFC 7396) into the value of ``key``."""

    key: str
    patch: dict[str, Any]
    if_version: int | None = None
    ttl: float | None = None

    def to_json(self) -> dict[str, Any]:
        operation: dict[str, Any] = {"op": "patch", "key": self.key, "patch": self.patch}
        if self.if_version is not None:
            operation["if_version"] = self.if_version
        if self.ttl is not None:
            operation["ttl"] = self.ttl
        return operation


Operation = Put | Delete | Patch
