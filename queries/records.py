"""Records with their metadata, read many at a time: what framework adapters (LangGraph's store) need.

- ``POST /v1/records/get`` ``{"keys": [...]}``: each key's live record or null, in the order asked.
- ``POST /v1/records/search`` ``{"prefix": "...", "filter": {...}, "limit": 10, "offset": 0}``: the live
  records under a key prefix whose values match the filter (the grammar of vector search's filters,
  `projections.vector_filter`), in key order.
- ``POST /v1/records/prefixes`` ``{"prefix": "...", "delimiter": ":", "after": "...", "limit": 100}``: the
  distinct parts of live keys under ``prefix`` that end before the first ``delimiter`` after it (S3's common
  prefixes), in key order. LangGraph's store keeps a namespace in such a part, so this lists namespaces.

A record is ``{"key", "value", "version", "created", "updated", "expires"}`` (times in milliseconds since the
epoch, ``expires`` null for no TTL). Everything is read from the hot projection, as listings are: every
partition must be complete and past ``X-AMS-Min-Position`` (else a 504, or a 503 while Redis restores lost
data). The tenant is the token's: every Redis key read carries it, so another tenant's keys are never seen.
Searches and prefix listings scan the tenant's key index under the prefix page by page on the server (pages
growing from what the answer needs to 256 keys) and send back only what matches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ams.auth import READ
from ams.http import ApiError, json_response, read_json
from commands.envelope import now_ms
from commands.keys import InvalidName, check_key, check_prefix, kafka_key, partition_for
from projections.vector_filter import Condition, InvalidFilter, matches_all, parse_filter
from queries.context import QueryContext, authorize, context
from queries.kv import hot_listing_ready, indexed_keys
from queries.params import min_position

MAX_KEYS = 1000
MAX_LIMIT = 1000
MAX_OFFSET = 10_000
# A scan reads the key index and the records a page at a time: the first page is what the answer needs if
# everything matches, and each next one 4 times larger (reading 256 records costs ~25 times one on redis-py).
MAX_SCAN_PAGE = 256
FIRST_PREFIX_PAGE = 4
MAX_DELIMITER = 8
_FIELDS = ["value", "version", "created", "updated", "expires", "deleted"]


@dataclass(frozen=True, slots=True)
class LiveRecord:
    key: str
    value: Any
    version: int
    created: int
    updated: int
    expires: int | None

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value, "version": self.version, "created": self.created,
                "updated": self.updated, "expires": self.expires}


async def read_records(ctx: QueryContext, tenant: str, keys: list[str]) -> list[LiveRecord | None]:
    """Each key's record if a reader may see it now (not deleted, not expired), in one pipeline."""
    if not keys:
        return []
    now = now_ms()
    async with ctx.redis.pipeline(transaction=False) as pipe:
        for key in keys:
            partition = partition_for(kafka_key(tenant, key), ctx.partitions)
            pipe.hmget(ctx.applied.layout_of(partition).record(partition, tenant, key), _FIELDS)
        rows = await pipe.execute()
    found: list[LiveRecord | None] = []
    for key, (value, version, created, updated, expires, deleted) in zip(keys, rows, strict=True):
        expiry = int(expires or 0)
        if value is None or version is None or deleted == b"1" or (expiry and expiry <= now):
            found.append(None)
        else:
            found.append(LiveRecord(key, orjson.loads(value), int(version), int(created or 0), int(updated or 0),
                                    expiry or None))
    return found


async def _body(request: Request, ctx: QueryContext, allowed: set[str]) -> dict[str, Any]:
    body = await read_json(request, ctx.settings.max_body_bytes)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, "invalid_body", f"unknown fields {unknown}; expected some of {sorted(allowed)}")
    return body


def _whole(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    raw = body.get(name, default)
    if isinstance(raw, bool) or not isinstance(raw, int) or not low <= raw <= high:
        raise ApiError(400, f"invalid_{name}", f"{name} must be a whole number from {low} to {high}, got {raw!r}")
    return raw


def _prefix(body: dict[str, Any]) -> str:
    raw = body.get("prefix", "")
    if not isinstance(raw, str):
        raise ApiError(400, "invalid_prefix", f"prefix must be a string, got {raw!r}")
    return check_prefix(raw)


def _prefix_bounds(prefix: str) -> tuple[bytes, bytes]:
    """ZRANGEBYLEX bounds of the keys starting with ``prefix`` (keys are ASCII, so b"\\xff" sorts last)."""
    if not prefix:
        return b"-", b"+"
    return b"[" + prefix.encode(), b"[" + prefix.encode() + b"\xff"


def _caller(request: Request) -> tuple[QueryContext, str]:
    """The namespace's read side and the tenant; authorized first, since a sandbox is resolved by its tenant."""
    principal = authorize(request, READ)
    return context(request), principal.tenant


async def _ready(request: Request, ctx: QueryContext) -> None:
    await hot_listing_ready(ctx, await min_position(request, ctx.partitions))


async def get_records(request: Request) -> Response:
    ctx, tenant = _caller(request)
    body = await _body(request, ctx, {"keys"})
    keys = body.get("keys")
    if not isinstance(keys, list) or not 1 <= len(keys) <= MAX_KEYS or not all(isinstance(k, str) for k in keys):
        raise ApiError(400, "invalid_keys", f"keys must be a list of 1 to {MAX_KEYS} keys")
    for key in keys:
        check_key(key)
    await _ready(request, ctx)
    records = await read_records(ctx, tenant, keys)
    return json_response({"items": [record.as_json() if record else None for record in records]})


async def search_records(request: Request) -> Response:
    ctx, tenant = _caller(request)
    body = await _body(request, ctx, {"prefix", "filter", "limit", "offset"})
    prefix = _prefix(body)
    try:
        conditions = parse_filter(body.get("filter"))
    except InvalidFilter as error:
        raise ApiError(400, "invalid_filter", str(error)) from None
    limit = _whole(body, "limit", 10, 1, MAX_LIMIT)
    offset = _whole(body, "offset", 0, 0, MAX_OFFSET)
    await _ready(request, ctx)
    matched = await _matching(ctx, tenant, prefix, conditions, offset + limit)
    return json_response({"items": [record.as_json() for record in matched[offset:offset + limit]]})


async def _matching(ctx: QueryContext, tenant: str, prefix: str, conditions: list[Condition],
                    wanted: int) -> list[LiveRecord]:
    """The first ``wanted`` live records under ``prefix`` whose values match, in key order."""
    lower, upper = _prefix_bounds(prefix)
    matched: list[LiveRecord] = []
    page = min(wanted, MAX_SCAN_PAGE)
    while len(matched) < wanted:
        keys = await indexed_keys(ctx, tenant, lower, upper, page)
        records = await read_records(ctx, tenant, keys)
        matched += [r for r in records if r is not None and matches_all(conditions, r.key, r.value)]
        if len(keys) < page:
            break
        lower = b"(" + keys[-1].encode()
        page = min(page * 4, MAX_SCAN_PAGE)
    return matched[:wanted]


def _delimiter(body: dict[str, Any]) -> str:
    raw = body.get("delimiter")
    if not isinstance(raw, str) or not 1 <= len(raw) <= MAX_DELIMITER:
        raise ApiError(400, "invalid_delimiter", f"delimiter must be a string of 1 to {MAX_DELIMITER} characters")
    try:
        check_prefix(raw)
    except InvalidName:
        raise ApiError(400, "invalid_delimiter", f"delimiter {raw!r} has characters no key has") from None
    return raw


async def list_prefixes(request: Request) -> Response:
    ctx, tenant = _caller(request)
    body = await _body(request, ctx, {"prefix", "delimiter", "after", "limit"})
    prefix, delimiter = _prefix(body), _delimiter(body)
    limit = _whole(body, "limit", 100, 1, MAX_LIMIT)
    lower, upper = _prefix_bounds(prefix)
    after = body.get("after")
    if after is not None:
        if not isinstance(after, str) or not after.startswith(prefix):
            raise ApiError(400, "invalid_after", "after must be a prefix this listing returned")
        lower = b"(" + check_prefix(after).encode() + delimiter.encode() + b"\xff"
    await _ready(request, ctx)
    found: list[str] = []
    page = FIRST_PREFIX_PAGE
    while len(found) < limit:
        keys = await indexed_keys(ctx, tenant, lower, upper, page)
        common = _first_common_prefix(keys, await read_records(ctx, tenant, keys), len(prefix), delimiter)
        if common is not None:
            found.append(common)
            lower = b"(" + common.encode() + delimiter.encode() + b"\xff"  # past every key it covers
            page = FIRST_PREFIX_PAGE
        elif len(keys) < page:
            break
        else:
            lower = b"(" + keys[-1].encode()
            page = min(page * 4, MAX_SCAN_PAGE)
    return json_response({"prefixes": found, "next_after": found[-1] if len(found) == limit else None})


def _first_common_prefix(keys: list[str], records: list[LiveRecord | None], start: int,
                         delimiter: str) -> str | None:
    """The part before the delimiter of the first live key that has one after ``start``."""
    for key, record in zip(keys, records, strict=True):
        cut = key.find(delimiter, start)
        if record is not None and cut >= 0:
            return key[:cut]
    return None


routes = [
    Route("/v1/records/get", get_records, methods=["POST"]),
    Route("/v1/records/search", search_records, methods=["POST"]),
    Route("/v1/records/prefixes", list_prefixes, methods=["POST"]),
]
