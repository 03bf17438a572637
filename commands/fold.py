"""The fold: one pure function decides what every event does to a key's record.

Every projection (Redis, PostgreSQL, the vector views) calls `apply`, so all of them agree on every
outcome, including which conditional writes lost. A lost condition is not an error in the log: it is an
event whose outcome is "rejected", which the writer learns by waiting for the projection.

A stream has a record of its own (a stream and a key of the same name are different things): it counts
the stream's observations and remembers recent command ids, so a retried append is a duplicate that no
projection shows twice.

Time inside the fold is the *event's* timestamp, never the clock of the machine folding it, so a replay
next year reaches the same outcomes as the live run did.

**Retries.** A command id (the client's Idempotency-Key) applied to a key is a duplicate when it comes
again within the idempotency window (``AMS_IDEMPOTENCY_WINDOW_HOURS``, by event time), however many other
commands the key accepted meanwhile. The record remembers its last ``MAX_REMEMBERED_COMMANDS`` command ids;
each command id pushed out of that list is ``Outcome.forgotten``, and the projection keeps it in the key's
*command index*, which it passes back to `apply` as ``seen``. A record whose list is not full has never
forgotten anything, so only keys with a full list (`consults_index`) need the index: every decision
depends on the log alone, and a rebuild from offset 0 reaches the same outcomes.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import msgspec

from ams.settings import get_settings
from commands.envelope import DELETE, PATCH, PUT, STREAM_APPEND, Event

# A retried command (same command id, same key) is recognised for this long (event time) after it was applied.
IDEMPOTENCY_WINDOW_MS = int(get_settings().idempotency_window_hours * 3_600_000)
# The record keeps this many recent command ids; older ones live in the projection's command index.
MAX_REMEMBERED_COMMANDS = 32

# (command id, version it produced, event ts)
Remembered = tuple[str, int, int]


class Status(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DUPLICATE = "duplicate"


class Record(msgspec.Struct, frozen=True, gc=False):
    """A key's state. A deleted key stays as a tombstone, so conditions and retries still see it.

    A msgspec struct, like `Event`: immutable and cheap to make (the fold makes one per accepted event). Not
    tracked by the cyclic garbage collector (``gc=False``): a record holds JSON values, which form no cycles,
    and a rebuild keeps hundreds of thousands of them that the collector would otherwise scan again and again."""

    value: Any
    version: int  # the offset of the last accepted event
    created_ts: int
    updated_ts: int
    expires_at: int | None = None  # milliseconds since the epoch
    deleted: bool = False
    # the last MAX_REMEMBERED_COMMANDS accepted commands, newest last
    commands: tuple[Remembered, ...] = ()

    def live_at(self, ts: int) -> bool:
        return not self.deleted and (self.expires_at is None or ts < self.expires_at)


class Outcome(msgspec.Struct, frozen=True, gc=False):
    """What one event did to its key (a struct like `Record`: the fold makes one per event)."""

    status: Status
    record: Record | None  # the record after the event (unchanged unless accepted)
    version: int | None = None  # accepted: the new version; duplicate: the version the original produced
    reason: str = ""
    forgotten: Remembered | None = None  # accepted: the command the record's list let go (for the index)

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


def consults_index(record: Record | None) -> bool:
    """Whether the key may have forgotten command ids, so a projection must look its command index up."""
    return record is not None and len(record.commands) >= MAX_REMEMBERED_COMMANDS


def _remembered(record: Record | None, event: Event, seen: Remembered | None) -> Remembered | None:
    """The newest remembered command with the event's command id (not None) within the window: the record's,
    then the index's."""
    command_id = event.command_id
    for entry in reversed(record.commands) if record is not None else ():
        if entry[0] == command_id and event.ts - entry[2] < IDEMPOTENCY_WINDOW_MS:
            return entry
    if seen is not None and seen[0] == command_id and event.ts - seen[2] < IDEMPOTENCY_WINDOW_MS:
        return seen
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


def apply(record: Record | None, event: Event, offset: int, seen: Remembered | None = None) -> Outcome:
    """What ``event``, found at ``offset`` of its partition, does to ``record`` (None: never written).

    ``seen``: the key's command index entry for ``event.command_id``, if any. Projections must pass it
    whenever `consults_index` says so; otherwise a retry after more than MAX_REMEMBERED_COMMANDS other
    commands would be applied a second time.
    """
    # An event without a command id, or without a condition, skips that check (a rebuild folds millions).
    if event.command_id is not None:
        seen = _remembered(record, event, seen if consults_index(record) else None)
        if seen is not None:
            return Outcome(Status.DUPLICATE, record, version=seen[1],
                           reason=f"command {seen[0]!r} was already applied at version {seen[1]}")
    current = record if record is not None and record.live_at(event.ts) else None
    if event.if_absent or event.if_version is not None:
        failure = _condition_failure(current, event)
        if failure:
            return Outcome(Status.REJECTED, record, reason=failure)

    commands = record.commands if record is not None else ()
    forgotten = None
    if event.command_id is not None:
        commands = (*commands, (event.command_id, offset, event.ts))
        if len(commands) > MAX_REMEMBERED_COMMANDS:
            forgotten, commands = commands[0], commands[1:]
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
        return Outcome(Status.ACCEPTED, tombstone, version=offset, forgotten=forgotten)
    elif event.type == STREAM_APPEND:
        # A stream's record counts its observations; its version is the offset of the last one.
        count = current.value if current is not None and isinstance(current.value, int) else 0
        value = count + 1
    else:
        raise ValueError(f"the fold does not apply {event.type!r} events")
    new = Record(value, offset, created, event.ts, expires_at, False, commands)
    return Outcome(Status.ACCEPTED, new, version=offset, forgotten=forgotten)


def fold(events: list[tuple[Event, int]], record: Record | None = None,
         index: dict[str, Remembered] | None = None) -> tuple[Record | None, list[Outcome]]:
    """Apply events in order to one key's record; the reference that every projection must match.

    ``index`` is the key's command index (updated in place); a fold from the key's first event needs none.
    """
    index = {} if index is None else index
    outcomes = []
    for event, offset in events:
        outcome = apply(record, event, offset, index.get(event.command_id) if event.command_id else None)
        record = outcome.record
        outcomes.append(outcome)
        remember(index, outcome)
    return record, outcomes


def remember(index: dict[str, Remembered], outcome: Outcome) -> None:
    """Keep the command id the record let go in the key's command index (the newest entry of an id wins)."""
    if outcome.forgotten is not None:
        index[outcome.forgotten[0]] = outcome.forgotten


def visible(record: Record | None, now: int) -> Record | None:
    """What a reader sees at wall-clock ``now``: nothing for absent, deleted or expired keys."""
    return record if record is not None and record.live_at(now) else None


__all__ = ["IDEMPOTENCY_WINDOW_MS", "MAX_REMEMBERED_COMMANDS", "Outcome", "Record", "Remembered", "Status", "apply",
           "consults_index", "fold", "merge_patch", "remember", "visible"]
