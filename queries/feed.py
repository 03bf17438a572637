"""Reading a tenant's events across all partitions without gaps, for the audit feed and watch.

Kafka orders events only within a partition, so a cursor over the whole log is a position per partition
(``"0:15,3:42"``). A page takes, from each partition, the events after the cursor in offset order, and
interleaves the partitions by event time; it takes a prefix of every partition, so moving the cursor to
the last event taken per partition skips nothing, even when clocks disagree.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Any

import asyncpg

from commands.keys import format_positions

KV_EVENT_COLUMNS = ("partition, log_offset, event_id, type, key, actor, command_id, ts, data, status, reason, "
                    "outcome_version, version, value, deleted, expires_at")
STREAM_EVENT_COLUMNS = ("partition, log_offset, event_id, 'stream.append' AS type, stream AS key, actor, "
                        "NULL::text AS command_id, ts, data, 'accepted' AS status, '' AS reason, "
                        "NULL::int8 AS outcome_version")

# $1 tenant, $2 partitions, $3 offsets after which to read, $4 and $5 the key range, $6 the page size.
KV_EVENTS = f"""
SELECT page.* FROM unnest($2::int[], $3::int8[]) AS since(partition, after)
CROSS JOIN LATERAL (
  SELECT {KV_EVENT_COLUMNS} FROM kv_history h
  WHERE h.tenant = $1 AND h.partition = since.partition AND h.log_offset > since.after
    AND h.key >= $4 AND h.key < $5 {{condition}}
  ORDER BY h.log_offset LIMIT $6) AS page
"""
STREAM_EVENTS = f"""
SELECT page.* FROM unnest($2::int[], $3::int8[]) AS since(partition, after)
CROSS JOIN LATERAL (
  SELECT {STREAM_EVENT_COLUMNS} FROM stream_entries s
  WHERE s.tenant = $1 AND s.partition = since.partition AND s.log_offset > since.after
    AND s.stream >= $4 AND s.stream < $5
  ORDER BY s.log_offset LIMIT $6) AS page
"""


def key_range(prefix: str) -> tuple[str, str]:
    """Keys use ASCII characters below DEL only, so every key under ``prefix`` sorts below prefix + DEL."""
    return prefix, prefix + "\x7f"


def cursor_arguments(cursor: dict[int, int], partitions: int) -> tuple[list[int], list[int]]:
    numbers = list(range(partitions))
    return numbers, [cursor.get(partition, -1) for partition in numbers]


def interleave(rows: Sequence[asyncpg.Record], limit: int) -> list[asyncpg.Record]:
    """The first ``limit`` rows, each partition's in offset order, partitions interleaved by event time."""
    by_partition: dict[int, list[asyncpg.Record]] = {}
    for row in rows:
        by_partition.setdefault(row["partition"], []).append(row)
    ordered = [sorted(items, key=lambda row: row["log_offset"]) for items in by_partition.values()]
    merged = heapq.merge(*ordered, key=lambda row: (row["ts"], row["partition"], row["log_offset"]))
    return [row for _, row in zip(range(limit), merged, strict=False)]


def advance(cursor: dict[int, int], rows: Sequence[Any]) -> dict[int, int]:
    moved = dict(cursor)
    for row in rows:
        moved[row["partition"]] = max(moved.get(row["partition"], -1), row["log_offset"])
    return moved


def cursor_token(cursor: dict[int, int]) -> str:
    return format_positions({partition: offset for partition, offset in cursor.items() if offset >= 0})
