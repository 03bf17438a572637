"""The fold: one pure function decides what every event does to a key's record.

Every projection (Redis, PostgreSQL, the vector views) calls `apply`, so all of them agree on every
outcome, including which conditional writes lost. A lost condition is not an error in the log: it is an
event whose outcome is "rejected", which the writer learns by waiting for the projection.

Time inside the fold is the *event's* timestamp, never the clock of the machine folding it, so a replay
next year reaches the same outcomes as the live run did.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, NamedTuple

from commands.envelope import DELETE, PATCH, PUT, Event

# A retried command (same command id, same key) is recognised for this long after it was applied.
IDEMPOTENCY_WINDOW_MS = 3_600_000
# At most this many recent command ids are remembered per key.
MAX_REMEMBERED_COMMANDS = 32


class Status(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DUPLICATE = "duplicate"


class Record(NamedTuple):
    """A key's state. A deleted key stays as a tombstone, so conditions and retries still see it.

    A named tuple, like `Event`: immutable and cheap to make (the fold makes one per accepted event)."""

    value: Any
    version: int  # the offset of the last accepted event
    created_ts: int
    updated_ts: int
    expires_at: int | None = None  # milliseconds since the epoch
    deleted: bool = False
    # (command id, version it produced, event ts), newest last
    commands: tuple[tuple[str, int, int], ...] = ()

    def live_at(self, ts: int) -> bool:
        return not self.deleted and (self.expires_at is None or ts < self.expires_at)


class Outcome(NamedTuple):
    """What one event did to its key (a named tuple, like `Record`: the fold makes one per event)."""

    status: Status
    record: Record | None  # the record after the event (unchanged unless accepted)
    version: int | None = None  # accepted: the new version; duplicate: the version the original produced
    reason: str = ""

    @property
    def accepted(self) -> bool:
        return self.status is Status.ACCEPTED


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON Merge Patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = merge_patch(result.get(name), value)
    return result


def _remembered(record: Record | None, event: Event) -> tuple[str, int, int] | None:
    if record is None or event.command_id is None:
        return None
    for entry in record.commands:
        command_id, _, ts = entry
        if command_id == event.command_id and event.ts - ts < IDEMPOTENCY_WINDOW_MS:
            return entry
    return None


def _condition_failure(current: Record | None, event: Event) -> str:
    if event.if_absent and current is not None:
        return f"key exists (version {current.version}); the write required it to be absent"
    if event.if_version is not None:
        if current is None:
            return f"key is absent; the write required version {event.if_version}"
        if current.version != event.if_version:
            return f"key is at version {current.version}; the write required version {event.if_version}"
    return ""


def apply(record: Record | None, event: Event, offset: int) -> Outcome:
    """What ``event``, found at ``offset`` of its partition, does to ``record`` (None: never written)."""
    seen = _remembered(record, event)
    if seen is not None:
        return Outcome(Status.DUPLICATE, record, version=seen[1],
                       reason=f"command {seen[0]!r} was already applied at version {seen[1]}")
    current = record if record is not None and record.live_at(event.ts) else None
    failure = _condition_failure(current, event)
    if failure:
        return Outcome(Status.REJECTED, record, reason=failure)

    commands = record.commands if record is not None else ()
    if event.command_id is not None:
        recent = [entry for entry in commands if event.ts - entry[2] < IDEMPOTENCY_WINDOW_MS]
        commands = (*recent, (event.command_id, offset, event.ts))[-MAX_REMEMBERED_COMMANDS:]
    created = current.created_ts if current is not None else event.ts
    expires_at = event.ts + event.ttl_ms if event.ttl_ms else None

    if event.type == PUT:
        value = event.data
    elif event.type == PATCH:
        value = merge_patch(current.value if current is not None else None, event.data)
        if expires_at is None and current is not None:
            expires_at = current.expires_at  # a patch keeps the key's expiry unless it sets a new one
    elif event.type == DELETE:
        tombstone = Record(None, offset, created, event.ts, None, True, commands)
        return Outcome(Status.ACCEPTED, tombstone, version=offset)
    else:
        raise ValueError(f"the key-value fold does not apply {event.type!r} events")
    new = Record(value, offset, created, event.ts, expires_at, False, commands)
    return Outcome(Status.ACCEPTED, new, version=offset)


def fold(events: list[tuple[Event, int]], record: Record | None = None) -> tuple[Record | None, list[Outcome]]:
    """Apply events in order to one key's record; the reference that every projection must match."""
    outcomes = []
    for event, offset in events:
        outcome = apply(record, event, offset)
        record = outcome.record
        outcomes.append(outcome)
    return record, outcomes


def visible(record: Record | None, now: int) -> Record | None:
    """What a reader sees at wall-clock ``now``: nothing for absent, deleted or expired keys."""
    return record if record is not None and record.live_at(now) else None


__all__ = ["IDEMPOTENCY_WINDOW_MS", "Outcome", "Record", "Status", "apply", "fold", "merge_patch", "visible"]
