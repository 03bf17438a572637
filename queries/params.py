"""Query parameters of the reads: each bad one is a 400 that says what was wrong and changes nothing.

Positions are written as in consistency tokens: ``partition:offset``, several joined by commas. A cursor
over the whole log (the audit feed, watch) names a position per partition; a partition it does not name
is read from its beginning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from prometheus_client import Counter
from starlette.requests import Request

from ams.http import ApiError
from commands.keys import InvalidName, Position, format_positions, parse_positions

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_POSITIONS = re.compile(r"\s*\d+:\d+\s*(,\s*\d+:\d+\s*)*")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LOG_END_LOOKUPS = Counter("ams_gateway_log_end_lookups",
                          "Reads that asked Kafka where the log ends (no projection had applied their position yet)")


def limit_param(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(400, "invalid_limit", f"limit must be a whole number from 1 to {MAX_LIMIT}, got {raw!r}")
    return int(raw)


def positions_value(raw: str, what: str, partitions: int) -> dict[int, int]:
    try:
        positions = parse_positions(raw)
    except InvalidName as error:
        raise ApiError(400, "invalid_position", f"{what}: {error}") from None
    if not positions:
        raise ApiError(400, "invalid_position", f"{what} is empty; write positions as '0:15,3:42'")
    beyond = sorted(partition for partition in positions if partition >= partitions)
    if beyond:
        raise ApiError(400, "invalid_position",
                       f"{what} names partition(s) {beyond}; the log has partitions 0 to {partitions - 1}")
    return positions


def position_param(request: Request, name: str, partitions: int) -> Position | None:
    """A single ``partition:offset`` (a paging cursor), or None when the parameter is absent."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    positions = positions_value(raw, name, partitions)
    if len(positions) != 1:
        raise ApiError(400, "invalid_position", f"{name} must be one position 'partition:offset', got {raw!r}")
    [(partition, offset)] = positions.items()
    return Position(partition, offset)


async def within_log(request: Request, positions: dict[int, int], what: str) -> dict[int, int]:
    """``positions``, if the log (the live one, or the sandbox's) has reached each of them: a read that
    waited for a position no event has yet could only time out, so it is refused at once with a 400.

    Kafka is asked only when neither projection has applied them yet: what a projection applied is in the
    log, and most tokens a reader carries are already applied, so asking on every read would add a round
    trip to Kafka to reads that need none."""
    namespace = request.app.state.namespaces.resolve(request)
    if positions and not (namespace.queries.applied.reached(positions) or namespace.queries.cold.reached(positions)):
        LOG_END_LOOKUPS.inc()
        heads = await namespace.commands.log.written_offsets()
        beyond = {partition: offset for partition, offset in positions.items() if offset >= heads.get(partition, 0)}
        if beyond:
            raise ApiError(400, "position_beyond_log",
                           f"{what} names {format_positions(beyond)}, past the end of the log "
                           f"({format_positions({p: head - 1 for p, head in heads.items()})}): no event has it")
    return positions


async def min_position(request: Request, partitions: int) -> dict[int, int]:
    """``X-AMS-Min-Position``: what the read must reflect at least ({} when absent)."""
    token = request.headers.get("x-ams-min-position")
    if not token:
        return {}
    return await within_log(request, positions_value(token, "X-AMS-Min-Position", partitions), "X-AMS-Min-Position")


@dataclass(frozen=True, slots=True)
class AsOf:
    """A point in the past: the log up to ``positions`` (per partition), or up to a time."""

    text: str  # as the caller wrote it
    positions: dict[int, int] | None = None
    ts: int | None = None  # milliseconds since the epoch


def as_of_value(raw: str, partitions: int) -> AsOf:
    if _POSITIONS.fullmatch(raw):
        return AsOf(raw, positions=positions_value(raw, "as_of", partitions))
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        moment = None
    if moment is None or len(raw) <= len("2025-01-31") or moment.tzinfo is None:
        raise ApiError(400, "invalid_as_of",
                       f"as_of must be a position ('3:42', or several: '0:15,3:42') or an RFC 3339 time with a "
                       f"timezone ('2025-01-31T12:00:00Z'), got {raw!r}")
    return AsOf(raw, ts=(moment - _EPOCH) // timedelta(milliseconds=1))


def order_param(request: Request) -> str:
    order = request.query_params.get("order", "newest")
    if order not in ("newest", "oldest"):
        raise ApiError(400, "invalid_order", f"order must be 'newest' or 'oldest', got {order!r}")
    return order
