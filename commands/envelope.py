"""The event envelope: what one line of the log says, versioned; written with orjson, read back with msgspec.

Events written by other tools are understood too: the line ``{"op":"set","key":"session:1234","value":{...}}``
produced with a console producer is a ``kv.put``, belonging to the tenant named by the Kafka header
``tenant`` or else to the configured default tenant.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable
from typing import Annotated, Any

import msgspec
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


# A non-negative integer; a bool is refused (msgspec is strict, and JSON's true is no count).
Count = Annotated[int, msgspec.Meta(ge=0)]


class Event(msgspec.Struct, frozen=True, gc=False):
    """One fact in the log. ``key`` is a KV key, or a stream name for ``stream.append``.

    A msgspec struct: immutable and cheap to make, and `decode` parses and type-checks a log line straight
    into one, in C. That matters when a rebuild decodes millions of them. It holds JSON values, which form
    no reference cycles, so the cyclic garbage collector need not track it (``gc=False``)."""

    type: str
    tenant: str
    key: str
    data: Any = None
    id: str = ""
    ts: Count = 0  # milliseconds since the epoch, stamped when the command was accepted
    actor: str = ""
    command_id: str | None = None
    if_version: Count | None = None  # conditional write: the key's version must be exactly this
    if_absent: bool = False  # create-only: the key must not exist
    ttl_ms: Annotated[int, msgspec.Meta(gt=0)] | None = None  # expiry, counted from ``ts``
    v: int = ENVELOPE_VERSION


_ENVELOPE = msgspec.json.Decoder(Event)
# msgspec reads integers of any size; orjson, which writes every projection's records, only 64-bit ones, and
# reads a longer one as a float, as the gateway did with the command. A longer integer has at least 19 digits:
# a line with such a run of digits is read as orjson reads it.
_DIGITS_AS_ZEROS = bytes(48 if 48 <= byte <= 57 else 32 for byte in range(256))
_LONG_NUMBER = b"0" * 19


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
        event = _ENVELOPE.decode(raw)
    except msgspec.ValidationError as error:  # JSON, but not an envelope: maybe another tool's line
        return _decode_other(raw, dict(headers), default_tenant, record_ts, max_value_bytes, error)
    except (msgspec.DecodeError, UnicodeDecodeError) as error:  # msgspec's own error for bad UTF-8 in a string
        raise MalformedEvent(f"value is not JSON: {error}") from None
    if _LONG_NUMBER in raw.translate(_DIGITS_AS_ZEROS):
        event = _as_orjson_reads(raw)
    kind = event.type
    _check_version(event.v)
    if kind not in EVENT_TYPES:
        raise MalformedEvent(f"unknown event type {kind!r}")
    try:
        check_tenant(event.tenant)
        if kind == STREAM_APPEND:
            check_key(event.key, "stream")
        else:
            check_key(event.key)
    except InvalidName as error:
        raise MalformedEvent(str(error)) from None
    if kind == PATCH and type(event.data) is not dict:
        raise MalformedEvent("a kv.patch carries a JSON object (RFC 7396 merge patch)")
    if max_value_bytes is not None and len(raw) > max_value_bytes:
        _check_value_size(event.data, max_value_bytes)
    return event


def _loads(raw: bytes) -> Any:
    """The line as orjson reads it (it refuses numbers out of a double's range, which msgspec reads as floats)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise MalformedEvent(f"value is not JSON that can be stored: {error}") from None


def _as_orjson_reads(raw: bytes) -> Event:
    try:
        return msgspec.convert(_loads(raw), Event)
    except msgspec.ValidationError as error:
        raise MalformedEvent(f"not a valid event: {error}") from None


def _check_version(version: Any) -> None:
    if version != ENVELOPE_VERSION:
        raise MalformedEvent(f"unknown envelope version {version!r}; this reader understands {ENVELOPE_VERSION}")


def _check_value_size(data: Any, limit: int) -> None:
    size = len(orjson.dumps(data))
    if size > limit:
        raise MalformedEvent(f"the value is {size} bytes, over the {limit}-byte limit of a value")


def _decode_other(raw: bytes, headers: dict[str, bytes], default_tenant: str, record_ts: int,
                  max_value_bytes: int | None, error: msgspec.ValidationError) -> Event:
    """A JSON value that is not a valid envelope: a console producer's line, or poison (say why)."""
    body = _loads(raw)
    if not isinstance(body, dict):
        raise MalformedEvent(f"value is JSON {type(body).__name__}, not an object")
    if "op" not in body or "v" in body:
        _check_version(body.get("v"))
        raise MalformedEvent(f"not a valid event: {error}")
    try:
        if max_value_bytes is not None and len(raw) > max_value_bytes:
            _check_value_size(body.get("value"), max_value_bytes)
        return _decode_legacy(body, headers, default_tenant, record_ts)
    except InvalidName as error:
        raise MalformedEvent(str(error)) from None


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
