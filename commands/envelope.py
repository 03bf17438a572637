"""The event envelope: what one line of the log says, versioned and serialized with orjson.

Events written by other tools are understood too: the line ``{"op":"set","key":"session:1234","value":{...}}``
produced with a console producer is a ``kv.put``, belonging to the tenant named by the Kafka header
``tenant`` or else to the configured default tenant.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable
from typing import Any, NamedTuple

import orjson

from commands.keys import InvalidName, check_key, check_tenant

ENVELOPE_VERSION = 1

PUT = "kv.put"
DELETE = "kv.delete"
PATCH = "kv.patch"
STREAM_APPEND = "stream.append"
EVENT_TYPES = frozenset({PUT, DELETE, PATCH, STREAM_APPEND})

_LEGACY_OPS = {"set": PUT, "put": PUT, "delete": DELETE, "del": DELETE, "patch": PATCH}


class MalformedEvent(ValueError):
    """Bytes in the log that are not an event this version understands; they go to the dead-letter topic."""


class Event(NamedTuple):
    """One fact in the log. ``key`` is a KV key, or a stream name for ``stream.append``.

    A named tuple rather than a frozen dataclass: as immutable, and several times cheaper to make, which
    matters when a rebuild decodes millions of them."""

    type: str
    tenant: str
    key: str
    data: Any = None
    id: str = ""
    ts: int = 0  # milliseconds since the epoch, stamped when the command was accepted
    actor: str = ""
    command_id: str | None = None
    if_version: int | None = None  # conditional write: the key's version must be exactly this
    if_absent: bool = False  # create-only: the key must not exist
    ttl_ms: int | None = None  # expiry, counted from ``ts``
    v: int = ENVELOPE_VERSION


def uuid7() -> str:
    """A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then randomness, so ids sort by time."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return str(uuid.UUID(int=value))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def encode(event: Event) -> bytes:
    body: dict[str, Any] = {"v": event.v, "id": event.id, "type": event.type, "tenant": event.tenant,
                            "key": event.key, "ts": event.ts, "actor": event.actor}
    if event.command_id is not None:
        body["command_id"] = event.command_id
    if event.if_version is not None:
        body["if_version"] = event.if_version
    if event.if_absent:
        body["if_absent"] = True
    if event.ttl_ms is not None:
        body["ttl_ms"] = event.ttl_ms
    if event.type != DELETE:
        body["data"] = event.data
    return orjson.dumps(body)


def decode(raw: bytes | None, headers: Iterable[tuple[str, bytes]] = (), *, default_tenant: str,
           record_ts: int = 0, max_value_bytes: int | None = None) -> Event:
    """Parse one log record's value. Raises MalformedEvent with the reason when it is not an event.

    ``record_ts`` (the Kafka record's timestamp) stamps events written by other tools without one.
    ``max_value_bytes``: an event whose value (serialized) is larger is malformed, as the gateway would
    have refused it; records produced straight into the log get no other size check.
    """
    if raw is None:
        raise MalformedEvent("record has no value")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise MalformedEvent(f"value is not JSON: {error}") from None
    if not isinstance(body, dict):
        raise MalformedEvent(f"value is JSON {type(body).__name__}, not an object")
    try:
        legacy = "op" in body and "v" not in body
        if max_value_bytes is not None and len(raw) > max_value_bytes:
            _check_value_size(body.get("value" if legacy else "data"), max_value_bytes)
        if legacy:
            return _decode_legacy(body, dict(headers), default_tenant, record_ts)
        return _decode_v1(body)
    except InvalidName as error:
        raise MalformedEvent(str(error)) from None


def _check_value_size(data: Any, limit: int) -> None:
    size = len(orjson.dumps(data))
    if size > limit:
        raise MalformedEvent(f"the value is {size} bytes, over the {limit}-byte limit of a value")


def _decode_v1(body: dict[str, Any]) -> Event:
    # A rebuild decodes millions of these: one lookup per field, and no work for the fields left out.
    get = body.get
    version = get("v")
    if version != ENVELOPE_VERSION:
        raise MalformedEvent(f"unknown envelope version {version!r}; this reader understands {ENVELOPE_VERSION}")
    kind = get("type")
    if kind not in EVENT_TYPES:
        raise MalformedEvent(f"unknown event type {kind!r}")
    tenant, key = get("tenant"), get("key")
    if type(tenant) is not str or type(key) is not str:
        raise MalformedEvent("tenant and key must be strings")
    check_tenant(tenant)
    check_key(key, "stream" if kind == STREAM_APPEND else "key")
    ts, if_version, ttl_ms = get("ts"), get("if_version"), get("ttl_ms")
    if ts is not None:
        _check_count("ts", ts)
    if if_version is not None:
        _check_count("if_version", if_version)
    if ttl_ms is not None:
        _check_count("ttl_ms", ttl_ms)
        if ttl_ms == 0:
            raise MalformedEvent("ttl_ms must be positive")
    data = get("data")
    if kind == PATCH and type(data) is not dict:
        raise MalformedEvent("a kv.patch carries a JSON object (RFC 7396 merge patch)")
    command_id = get("command_id")
    if command_id is not None and type(command_id) is not str:
        raise MalformedEvent("command_id must be a string")
    return Event(kind, tenant, key, data, str(get("id") or ""), ts or 0, str(get("actor") or ""), command_id,
                 if_version, bool(get("if_absent")), ttl_ms)


def _check_count(name: str, value: Any) -> None:
    if type(value) is not int or value < 0:  # bool is an int subclass: refused too
        raise MalformedEvent(f"{name} must be a non-negative integer, got {value!r}")


def _decode_legacy(body: dict[str, Any], headers: dict[str, bytes], default_tenant: str, record_ts: int) -> Event:
    kind = _LEGACY_OPS.get(str(body["op"]).lower())
    if kind is None:
        raise MalformedEvent(f"unknown op {body['op']!r}; expected one of {sorted(_LEGACY_OPS)}")
    key = body.get("key")
    if not isinstance(key, str):
        raise MalformedEvent("key must be a string")
    tenant_header = headers.get("tenant")
    tenant = tenant_header.decode(errors="replace") if tenant_header else default_tenant
    check_tenant(tenant)
    check_key(key)
    data = body.get("value")
    if kind == PATCH and not isinstance(data, dict):
        raise MalformedEvent("a patch op carries a JSON object value (RFC 7396 merge patch)")
    return Event(type=kind, tenant=tenant, key=key, data=data, ts=record_ts, actor="producer")
