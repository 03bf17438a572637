"""The ``memory.embeddings`` topic: what the embedder emits and every vector view applies.

Each record is keyed like the source key (``tenant|key``), so one key's operations stay in order in one
partition. An operation carries the key's *version* (the offset of the event that produced it): a view
applies it only when it is newer than what the view holds for the key, so duplicates and replays are
harmless. A ``mark`` says that the embedder has processed ``memory.events`` partition ``partition``
through ``through``: views use it to honour consistency tokens and to report their lag.

A ``repair`` operation (from `ams reindex`) also applies when its version equals the view's, so it
rewrites an entry that a view holds at the right version but with the wrong content.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from commands.envelope import MalformedEvent
from commands.keys import check_key, check_tenant
from commands.vectors import METRICS, Metric

UPSERT = "upsert"
DELETE = "delete"
MARK = "mark"
FORMAT_VERSION = 1

@dataclass(frozen=True, slots=True)
class EmbeddingOp:
    op: str  # UPSERT, DELETE or MARK
    tenant: str = ""
    key: str = ""
    version: int = -1
    vector: np.ndarray | None = None  # float32, as given (views normalize for cosine)
    metric: Metric = "cosine"
    value: Any = None  # the record's value without its vector field
    expires_at: int | None = None
    repair: bool = False
    partition: int = -1  # mark: the memory.events partition ...
    through: int = -1  # ... processed through this offset


def encode_op(op: EmbeddingOp) -> bytes:
    if op.op == MARK:
        return orjson.dumps({"v": FORMAT_VERSION, "op": MARK, "partition": op.partition, "through": op.through})
    body: dict[str, Any] = {"v": FORMAT_VERSION, "op": op.op, "tenant": op.tenant, "key": op.key,
                            "version": op.version}
    if op.repair:
        body["repair"] = True
    if op.op == UPSERT:
        assert op.vector is not None
        body |= {"vector": base64.b64encode(np.asarray(op.vector, dtype="<f4").tobytes()).decode(),
                 "metric": op.metric, "value": op.value, "expires_at": op.expires_at}
    return orjson.dumps(body)


def _int(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MalformedEvent(f"embedding record: {name} must be a non-negative integer, got {value!r}")
    return value


def decode_op(raw: bytes | None) -> EmbeddingOp:
    """Parse one ``memory.embeddings`` record; raises MalformedEvent with the reason when it is not one."""
    if raw is None:
        raise MalformedEvent("embedding record has no value")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise MalformedEvent(f"embedding record is not JSON: {error}") from None
    if not isinstance(body, dict) or body.get("v") != FORMAT_VERSION:
        raise MalformedEvent(f"embedding record is not format version {FORMAT_VERSION}")
    kind = body.get("op")
    if kind == MARK:
        return EmbeddingOp(MARK, partition=_int(body, "partition"), through=_int(body, "through"))
    if kind not in (UPSERT, DELETE):
        raise MalformedEvent(f"embedding record has unknown op {kind!r}")
    tenant, key = body.get("tenant"), body.get("key")
    if not isinstance(tenant, str) or not isinstance(key, str):
        raise MalformedEvent("embedding record: tenant and key must be strings")
    try:
        check_tenant(tenant)
        check_key(key)
    except ValueError as error:
        raise MalformedEvent(f"embedding record: {error}") from None
    version, repair = _int(body, "version"), bool(body.get("repair"))
    if kind == DELETE:
        return EmbeddingOp(DELETE, tenant, key, version, repair=repair)
    try:
        vector = np.frombuffer(base64.b64decode(body["vector"], validate=True), dtype="<f4").astype(np.float32)
    except (KeyError, TypeError, ValueError) as error:
        raise MalformedEvent(f"embedding record: vector is not base64 float32 ({error!r})") from None
    metric = body.get("metric")
    if metric not in METRICS or not vector.size or not np.isfinite(vector).all():
        raise MalformedEvent(f"embedding record: bad metric {metric!r} or vector")
    expires_at = body.get("expires_at")
    if expires_at is not None and (not isinstance(expires_at, int) or isinstance(expires_at, bool)):
        raise MalformedEvent("embedding record: expires_at must be an integer or null")
    return EmbeddingOp(UPSERT, tenant, key, version, vector, metric, body.get("value"), expires_at, repair)
