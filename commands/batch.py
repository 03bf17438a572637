"""`POST /v1/batch`: several commands appended in one Kafka transaction."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ams.auth import WRITE, Principal
from ams.http import ApiError, authorize, json_response, read_json
from commands.envelope import DELETE, PATCH, PUT, Event
from commands.http import (
    MAX_TTL_SECONDS,
    await_applied,
    command_context,
    new_event,
    result_of,
    wants_async,
    write_conditions,
)
from commands.keys import InvalidName, check_key, format_positions


async def batch(request: Request) -> Response:
    """Several commands appended in one Kafka transaction: all of them reach the log, or none does.

    Conditions (``if_version``, ``if_absent``) are decided per operation by the fold, like single writes.
    """
    principal = authorize(request, WRITE)
    settings = command_context(request).settings
    command_id = write_conditions(request).get("command_id")
    body = await read_json(request, settings.max_body_bytes)
    operations = body.get("operations") if isinstance(body, dict) else None
    if not isinstance(operations, list) or not operations:
        shape = '{"operations": [{"op": "put", "key": ..., "value": ...}, ...]}'
        raise ApiError(422, "invalid_batch", f"a batch is {shape}")
    if len(operations) > settings.max_batch_operations:
        raise ApiError(413, "batch_too_large",
                       f"a batch holds at most {settings.max_batch_operations} operations, got {len(operations)}")
    events = [
        _event_of(principal, index, operation, settings.max_value_bytes,
                  f"{command_id}#{index}" if command_id else None)
        for index, operation in enumerate(operations)
    ]
    positions = await command_context(request).log.append_atomically(events)
    token = format_positions({p.partition: p.offset for p in sorted(positions)})
    headers = {"X-AMS-Position": token}
    results = [{"key": event.key, "op": event.type, "position": str(position)}
               for event, position in zip(events, positions, strict=True)]
    if wants_async(request, principal.tenant, [event.key for event in events]):
        return json_response({"results": [{**r, "status": "pending"} for r in results], "positions": token},
                             202, headers)
    outcomes = await await_applied(request, positions, token)
    for result, position, outcome in zip(results, positions, outcomes, strict=True):
        result.update(result_of(position, outcome))
    return json_response({"results": results, "positions": token}, 200, headers)


_BATCH_OPS = {"put": PUT, "delete": DELETE, "patch": PATCH}


def _event_of(principal: Principal, index: int, operation: Any, max_value: int, command_id: str | None) -> Event:
    where = f"operation {index}"
    if not isinstance(operation, dict) or operation.get("op") not in _BATCH_OPS:
        raise ApiError(422, "invalid_batch", f"{where}: needs an 'op' of {', '.join(_BATCH_OPS)}")
    unknown = set(operation) - {"op", "key", "value", "patch", "if_version", "if_absent", "ttl"}
    if unknown:
        raise ApiError(422, "invalid_batch", f"{where}: unknown fields {sorted(unknown)}")
    kind = _BATCH_OPS[operation["op"]]
    key = operation.get("key")
    if not isinstance(key, str):
        raise ApiError(422, "invalid_batch", f"{where}: 'key' must be a string")
    try:
        check_key(key)
    except InvalidName as error:
        raise ApiError(400, "invalid_name", f"{where}: {error}") from None
    data = operation.get("value") if kind == PUT else operation.get("patch")
    if kind == PUT and "value" not in operation:
        raise ApiError(422, "invalid_batch", f"{where}: a put needs a 'value'")
    if kind == PATCH and not isinstance(data, dict):
        raise ApiError(422, "invalid_batch", f"{where}: a patch needs a 'patch' object (RFC 7396)")
    if kind != DELETE and len(orjson.dumps(data)) > max_value:
        raise ApiError(413, "value_too_large", f"{where}: the value is larger than {max_value} bytes")
    if_version = operation.get("if_version")
    if if_version is not None and (not isinstance(if_version, int) or isinstance(if_version, bool) or if_version < 0):
        raise ApiError(422, "invalid_batch", f"{where}: 'if_version' must be a version number")
    ttl = operation.get("ttl")
    if ttl is not None and (kind == DELETE or not isinstance(ttl, int | float) or not 0 < ttl <= MAX_TTL_SECONDS):
        raise ApiError(422, "invalid_batch", f"{where}: 'ttl' must be seconds above 0 (on put or patch)")
    return new_event(principal, kind, key, None if kind == DELETE else data, if_version=if_version,
                  if_absent=bool(operation.get("if_absent")), ttl_ms=max(1, round(ttl * 1000)) if ttl else None,
                  command_id=command_id)


routes = [Route("/v1/batch", batch, methods=["POST"])]
