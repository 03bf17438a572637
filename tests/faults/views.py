"""Projection views: what each projection shows of a tenant, and what a fresh fold of the log says it must show.

A view turns both into rows (``row id -> canonical JSON-able value``); the checker compares them row by
row and prints a digest (SHA-256 over the sorted rows) of each side. A new projection plugs in by adding
a view to `views()`. The workload writes no vectors, so the vector views have nothing to compare.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import orjson
import redis.asyncio as aioredis

from ams.settings import Settings
from commands.envelope import STREAM_APPEND, now_ms
from commands.fold import Record, Status
from commands.keys import STREAM_MARK, Position, format_positions, kafka_key, partition_for, stream_key
from projections.postgres import record_from_row
from projections.postgres_schema import connect
from projections.redis_kv import OUTCOME_TTL_SECONDS, decode_record, decode_remembered
from projections.redis_layout import RedisLayout
from tests.faults.logview import KV, STREAM, LogView

Rows = dict[str, Any]


def digest(rows: Rows) -> str:
    blob = orjson.dumps(sorted(rows.items()), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(blob).hexdigest()[:16]


class ProjectionView(Protocol):
    name: str

    def expected(self, log: LogView) -> Rows:
        """The rows a projection that applied the whole log must hold."""
        ...

    async def actual(self, log: LogView) -> Rows:
        """The rows the projection holds now."""
        ...

    def may_lack(self, row: str, log: LogView) -> bool:
        """True when ``row`` may be missing from the projection (data it keeps only for a while)."""
        ...


@dataclass
class Comparison:
    view: str
    expected_digest: str
    actual_digest: str
    differing: list[str]  # row ids, with both sides

    @property
    def divergent(self) -> int:
        return len(self.differing)


async def compare(view: ProjectionView, log: LogView) -> Comparison:
    expected, actual = view.expected(log), await view.actual(log)
    differing = []
    for row in sorted(set(expected) | set(actual)):
        want, got = expected.get(row), actual.get(row)
        if want == got or (got is None and view.may_lack(row, log)):
            continue
        differing.append(f"{row}: the log's fold says {want!r}, {view.name} has {got!r}")
    kept = {row: value for row, value in expected.items() if row in actual or not view.may_lack(row, log)}
    return Comparison(view.name, digest(kept), digest(actual), differing)


def _kv_row(record: Record) -> dict[str, Any]:
    return {"version": record.version, "value": None if record.deleted else record.value, "deleted": record.deleted,
            "expires": record.expires_at, "created": record.created_ts, "updated": record.updated_ts,
            "commands": [list(entry) for entry in record.commands]}


def _stream_row(record: Record) -> dict[str, Any]:
    return {"version": record.version, "count": record.value, "created": record.created_ts,
            "updated": record.updated_ts, "commands": [list(entry) for entry in record.commands]}


def _index_rows(log: LogView) -> Rows:
    return {f"commands:{space}:{key}": sorted([version, command_id, ts] for command_id, version, ts in index.values())
            for (space, key), index in log.indexes.items() if index}


class RedisView:
    """The hot projection read straight from Redis, in each partition's live generation."""

    name = "redis"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.layout = RedisLayout(settings.redis_prefix)

    def expected(self, log: LogView) -> Rows:
        rows: Rows = _index_rows(log)
        for (space, key), record in log.records.items():
            if record is None:
                continue
            if space == KV:
                rows[f"kv:{key}"] = _kv_row(record)
                if not record.deleted:
                    rows[f"index:{key}"] = partition_for(kafka_key(log.tenant, key), self.settings.partitions)
            else:
                rows[f"stream:{key}"] = _stream_row(record)
        for logged in log.events:
            if logged.status is not Status.ACCEPTED:
                rows[f"outcome:{logged.position}"] = {"status": logged.status.value, "reason": logged.reason,
                                                      "version": logged.version}
        return rows

    def may_lack(self, row: str, log: LogView) -> bool:
        """Outcomes of rejected events are kept OUTCOME_TTL_SECONDS after they were applied, then dropped."""
        if not row.startswith("outcome:"):
            return False
        partition, _, offset = row.removeprefix("outcome:").partition(":")
        logged = log.at.get(Position(int(partition), int(offset)))
        margin_ms = 60_000
        return logged is None or now_ms() - logged.event.ts > OUTCOME_TTL_SECONDS * 1000 - margin_ms

    async def actual(self, log: LogView) -> Rows:
        client = aioredis.from_url(self.settings.redis_url)
        try:
            partitions = range(self.settings.partitions)
            pointers = await client.mget([self.layout.pointer(partition) for partition in partitions])
            layouts = {partition: self.layout.at(int(value or 0)) for partition, value in enumerate(pointers)}
            rows: Rows = {}
            for partition, layout in layouts.items():
                await self._partition_rows(client, partition, layout, log.tenant, rows)
            positions = [logged.position for logged in log.events]
            outcomes = await client.mget([layouts[p.partition].outcome(p.partition, p.offset) for p in positions]) \
                if positions else []
            for position, raw in zip(positions, outcomes, strict=True):
                if raw is not None:
                    rows[f"outcome:{position}"] = orjson.loads(raw)
            return rows
        finally:
            await client.aclose()

    async def _partition_rows(self, client: aioredis.Redis, partition: int, layout: RedisLayout, tenant: str,
                              rows: Rows) -> None:
        tag = layout.partition_prefix(partition)
        for kind in ("kv", "stream"):
            async for name in client.scan_iter(match=f"{tag}{kind}:{tenant}:*", count=1000):
                key = name.decode()[len(f"{tag}{kind}:{tenant}:"):]
                record = decode_record(await client.hgetall(name))  # type: ignore[arg-type]
                if record is None:
                    continue
                if self._home(kind, tenant, key) != partition:
                    rows[f"misplaced:{name.decode()}"] = True
                elif kind == KV:
                    rows[f"kv:{key}"] = _kv_row(record)
                else:
                    rows[f"stream:{key}"] = _stream_row(record)
        async for name in client.scan_iter(match=f"{tag}cmd:{tenant}:*", count=1000):
            key = name.decode()[len(f"{tag}cmd:{tenant}:"):]
            found: dict[bytes, bytes] = await client.hgetall(name)  # type: ignore[assignment]
            entries = [decode_remembered(command_id.decode(), raw) for command_id, raw in found.items()]
            space = STREAM if key.startswith(STREAM_MARK) else KV
            rows[f"commands:{space}:{key.removeprefix(STREAM_MARK)}"] = sorted(
                [version, command_id, ts] for command_id, version, ts in entries)
        for member in await client.zrange(layout.index(partition, tenant), 0, -1):
            rows[f"index:{member.decode()}"] = partition  # type: ignore[union-attr]

    def _home(self, space: str, tenant: str, key: str) -> int:
        record_key = kafka_key(tenant, key) if space == KV else stream_key(tenant, key)
        return partition_for(record_key, self.settings.partitions)


class PostgresView:
    """The durable projection read by SQL: current records, stream records, each event's outcome in the
    history, and the stream entries (only accepted appends)."""

    name = "postgres"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def expected(self, log: LogView) -> Rows:
        rows: Rows = {}
        for (space, key), record in log.records.items():
            if record is not None:
                rows[f"{space}:{key}"] = _kv_row(record) if space == KV else _stream_row(record)
        for logged in log.events:
            if logged.event.type == STREAM_APPEND:
                if logged.status is Status.ACCEPTED:
                    rows[f"entry:{logged.position}"] = {"stream": logged.event.key,
                                                        "command_id": logged.event.command_id}
                else:
                    rows[f"retry:{logged.position}"] = {"version": logged.version, "reason": logged.reason}
            else:
                rows[f"history:{logged.position}"] = {"status": logged.status.value, "version": logged.version,
                                                      "reason": logged.reason}
        return rows

    def may_lack(self, row: str, log: LogView) -> bool:
        return False

    async def actual(self, log: LogView) -> Rows:
        connection = await connect(self.settings.postgres_dsn, self.settings.postgres_schema)
        try:
            rows: Rows = {}
            for row in await connection.fetch(
                    "SELECT key, value, version, created_ts, updated_ts, expires_at, deleted, commands "
                    "FROM kv_current WHERE tenant = $1", log.tenant):
                rows[f"{KV}:{row['key']}"] = _kv_row(record_from_row(row))
            for row in await connection.fetch(
                    "SELECT stream AS key, count AS value, version, created_ts, updated_ts, NULL::int8 AS expires_at, "
                    "false AS deleted, commands FROM stream_current WHERE tenant = $1", log.tenant):
                rows[f"{STREAM}:{row['key']}"] = _stream_row(record_from_row(row))
            for row in await connection.fetch(
                    "SELECT partition, log_offset, status, outcome_version, reason FROM kv_history WHERE tenant = $1",
                    log.tenant):
                rows[f"history:{row['partition']}:{row['log_offset']}"] = {
                    "status": row["status"], "version": row["outcome_version"], "reason": row["reason"]}
            for row in await connection.fetch(
                    "SELECT partition, log_offset, stream, command_id FROM stream_entries WHERE tenant = $1",
                    log.tenant):
                rows[f"entry:{row['partition']}:{row['log_offset']}"] = {"stream": row["stream"],
                                                                         "command_id": row["command_id"]}
            for row in await connection.fetch(
                    "SELECT partition, log_offset, outcome_version, reason FROM stream_retries WHERE tenant = $1",
                    log.tenant):
                rows[f"retry:{row['partition']}:{row['log_offset']}"] = {"version": row["outcome_version"],
                                                                         "reason": row["reason"]}
            return rows
        finally:
            await connection.close()


class GatewayView:
    """What a client of the gateway reads: every key by GET, and the key listing, with a token of the log's end."""

    name = "gateway"

    def __init__(self, settings: Settings, token: str) -> None:
        self.settings, self.token = settings, token

    def expected(self, log: LogView) -> Rows:
        now = now_ms()
        rows: Rows = {}
        for (space, key), record in log.records.items():
            if space == KV and record is not None and record.live_at(now):
                rows[f"kv:{key}"] = {"version": record.version, "value": record.value}
        rows["listing"] = sorted([key.removeprefix("kv:"), row["version"]] for key, row in rows.items())
        return rows

    def may_lack(self, row: str, log: LogView) -> bool:
        return False

    async def actual(self, log: LogView) -> Rows:
        wait = {"X-AMS-Min-Position": format_positions(log.last_offsets)} if log.last_offsets else {}
        headers = {"Authorization": f"Bearer {self.token}", **wait}
        rows: Rows = {}
        async with httpx.AsyncClient(base_url=self.settings.gateway_url, headers=headers, timeout=60) as client:
            listing: list[list[Any]] = []
            cursor: str | None = None
            while True:
                params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
                page = (await client.get("/v1/kv", params=params)).raise_for_status().json()
                listing += [[item["key"], item["version"]] for item in page["items"]]
                cursor = page["next_cursor"]
                if not cursor:
                    break
            rows["listing"] = sorted(listing)
            keys = {key for space, key in log.records if space == KV} | {key for key, _ in listing}
            for key in sorted(keys):
                response = await client.get(f"/v1/kv/{key}")
                if response.status_code == 200:
                    rows[f"kv:{key}"] = {"version": int(response.headers["ETag"].strip('"')), "value": response.json()}
                elif response.status_code != 404:
                    rows[f"kv:{key}"] = {"error": response.status_code, "body": response.text[:200]}
        return rows


def views(settings: Settings, token: str) -> list[ProjectionView]:
    """Every projection the checker compares with the log. Add a projection's view here."""
    return [RedisView(settings), PostgresView(settings), GatewayView(settings, token)]

