"""Where a slice of the log ends: a consistency token (per-partition offsets) or a moment in time.

``--until 0:15,3:42`` keeps partition 0 up to offset 15 and partition 3 up to offset 42; partitions the
token does not name are cut at the newest timestamp among the named events, so the slice is the log as it
stood when those writes were made. ``--until 2026-11-24T10:00:00Z`` keeps every event up to that time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from commands.keys import InvalidName, parse_positions


class PositionNotInLog(ValueError):
    """A cut names a position the log does not have."""


@dataclass(frozen=True)
class Cut:
    offsets: dict[int, int]  # partition -> last offset kept (inclusive)
    until_ms: int | None = None  # events after this time are left out, in partitions not in ``offsets``

    def keeps(self, partition: int, offset: int, timestamp_ms: int) -> bool:
        if partition in self.offsets:
            return offset <= self.offsets[partition]
        return self.until_ms is None or timestamp_ms <= self.until_ms

    def last_offset(self, partition: int) -> int | None:
        """Past this offset nothing of ``partition`` is kept (None: read to the end, filtering by time)."""
        return self.offsets.get(partition)


EVERYTHING = Cut({})


def parse_time(text: str) -> int:
    """RFC 3339 time to milliseconds since the epoch; raise InvalidName with the reason."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidName(f"{text!r} is neither a position like '0:15,3:42' nor an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise InvalidName(f"time {text!r} needs a time zone, e.g. {text}Z")
    return int(moment.timestamp() * 1000)


def parse_cut(text: str | None) -> Cut:
    """A cut from its text; a token's time for unnamed partitions is filled in by `replay.log_io`."""
    if not text:
        return EVERYTHING
    if ":" in text and "T" not in text:
        return Cut(parse_positions(text))
    return Cut({}, parse_time(text))
