"""The command side of the HTTP API: validate, append to the log, and answer with the outcome.

A write is *strong* by default: it answers once the hot projection has applied it, with the fold's
outcome. With ``Prefer: respond-async`` it is *eventual* and answers 202 as soon as Kafka has it.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ams.auth import WRITE, Principal
from ams.http import ApiError, authorize, json_response, read_json
from ams.settings import Settings
from commands.consistency import EVENTUAL, default_class
from commands.envelope import DELETE, PATCH, PUT, STREAM_APPEND, Event, now_ms, uuid7
from commands.keys import Position, check_key
from commands.log import EventLog
from commands.vectors import check_vector_value

MAX_TTL_SECONDS = 10 * 365 * 86400
OUTCOME_RETRY_SECONDS = 0.05
MAX_IDEMPOTENCY_KEY = 200


class AppliedWatch(Protocol):
    """What the command side needs to know of the hot projection to answer a strong write."""

    async def wait_applied(self, positions: dict[int, int], timeout: float) -> bool: ...

    async def outcomes(self, positions: list[Position]) -> list[dict[str, Any] | None] | None:
        """The outcome of each event the fold did not accept (None: accepted); None for the whole list when
        the projection cannot vouch for them now (it lost data since it applied them, and is restoring it)."""
        ...


@dataclass
class CommandContext:
    settings: Settings
    log: EventLog
    watch: AppliedWatch


def command_context(request: Request) -> CommandContext:
    """The write side of the namespace the request names: live, or the sandbox in ``X-AMS-Sandbox``."""
    context: CommandContext = request.app.state.namespaces.resolve(request).commands
    return context


def _version_header(request: Request, name: str) -> int | None:
    raw = request.headers.get(name)
    if raw is None:
        return None
    text = raw.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise ApiError(400, "invalid_header", f"{name} must be a version number (an ETag from a read), got {raw!r}")
    return int(text)


def write_conditions(request: Request) -> dict[str, Any]:
    conditions: dict[str, Any] = {"if_version": _version_header(request, "if-match")}
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        if if_none_match.strip() != "*":
            message = "If-None-Match supports only '*' (create the key only if it is absent)"
            raise ApiError(400, "invalid_header", message)
        conditions["if_absent"] = True
    command_id = request.headers.get("idempotency-key")
    if command_id is not None:
        if not 1 <= len(command_id) <= MAX_IDEMPOTENCY_KEY or not command_id.isprintable():
            message = f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters"
            raise ApiError(400, "invalid_header", message)
        conditions["command_id"] = command_id
    return conditions


def _ttl_ms(request: Request) -> int | None:
    raw = request.query_params.get("ttl")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (0 < seconds <= MAX_TTL_SECONDS):
        message = f"ttl must be a number of seconds above 0 and at most {MAX_TTL_SECONDS}, got {raw!r}"
        raise ApiError(400, "invalid_ttl", message)
    return max(1, round(seconds * 1000))


def wants_async(request: Request, tenant: str, keys: list[str]) -> bool:
    """Eventual when the request prefers it, or when the tenant's policy makes every key eventual."""
    if any(part.strip() == "respond-async" for part in request.headers.get("prefer", "").split(",")):
        return True
    policy = command_context(request).settings.consistency_policy
    return bool(keys) and all(default_class(policy, tenant, key) == EVENTUAL for key in keys)


async def await_applied(request: Request, positions: list[Position], token: str) -> list[dict[str, Any] | None]:
    context = command_context(request)
    highest: dict[int, int] = {}
    for position in positions:
        highest[position.partition] = max(position.offset, highest.get(position.partition, -1))
    deadline = time.monotonic() + context.settings.write_timeout
    while time.monotonic() < deadline and await context.watch.wait_applied(highest, deadline - time.monotonic()):
        found = await context.watch.outcomes(positions)
        if found is not None:
            return found
        # Applied, then lost with the hot state before its outcome was read: wait until it is restored.
        await asyncio.sleep(OUTCOME_RETRY_SECONDS)
    raise ApiError(
        504, "projection_timeout",
        f"the write is in the log at {token} but the hot projection did not apply it within "
        f"{context.settings.write_timeout:g}s; it will be applied, read with X-AMS-Min-Position: {token}",
        {"X-AMS-Position": token},
    )


def result_of(position: Position, outcome: dict[str, Any] | None) -> dict[str, Any]:
    if outcome is None:
        return {"status": "accepted", "version": position.offset}
    if outcome["status"] == "duplicate":
        return {"status": "duplicate", "version": outcome["version"], "message": outcome["reason"]}
    return {"status": "rejected", "reason": outcome["reason"]}


async def submit(request: Request, event: Event) -> Response:
    """Append ``event``; answer 202 at once (eventual) or with the projection's outcome (strong)."""
    position = await command_context(request).log.append(event)
    token = str(position)
    body: dict[str, Any] = {"event_id": event.id, "key": event.key, "position": token}
    headers = {"X-AMS-Position": token}
    if wants_async(request, event.tenant, [event.key]):
        return json_response({**body, "status": "pending"}, 202, headers)
    [outcome] = await await_applied(request, [position], token)
    result = result_of(position, outcome)
    if result["status"] == "rejected":
        raise ApiError(409, "conflict", f"the write was not applied: {result['reason']}", headers)
    return json_response({**body, **result}, 200, {**headers, "ETag": f'"{result["version"]}"'})


def new_event(principal: Principal, kind: str, key: str, data: Any = None, **options: Any) -> Event:
    return Event(kind, principal.tenant, key, data, id=uuid7(), ts=now_ms(), actor=principal.subject, **options)


async def put_value(request: Request) -> Response:
    principal = authorize(request, WRITE)
    key = check_key(request.path_params["key"])
    conditions = write_conditions(request)
    ttl_ms = _ttl_ms(request)
    value = await read_json(request, command_context(request).settings.max_value_bytes)
    await check_vector_value(request, command_context(request).settings, principal.tenant, value)
    return await submit(request, new_event(principal, PUT, key, value, ttl_ms=ttl_ms, **conditions))


async def delete_value(request: Request) -> Response:
    principal = authorize(request, WRITE)
    key = check_key(request.path_params["key"])
    conditions = write_conditions(request)
    if conditions.get("if_absent"):
        raise ApiError(400, "invalid_header", "If-None-Match: * makes no sense on DELETE; use If-Match: <version>")
    return await submit(request, new_event(principal, DELETE, key, **conditions))


async def patch_value(request: Request) -> Response:
    principal = authorize(request, WRITE)
    key = check_key(request.path_params["key"])
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in ("application/merge-patch+json", "application/json"):
        raise ApiError(415, "unsupported_media_type",
                       f"PATCH takes an RFC 7396 merge patch as application/merge-patch+json, not {media_type!r}")
    conditions = write_conditions(request)
    ttl_ms = _ttl_ms(request)
    patch = await read_json(request, command_context(request).settings.max_value_bytes)
    if not isinstance(patch, dict):
        message = "a merge patch is a JSON object (RFC 7396); send a PUT to replace the value"
        raise ApiError(422, "invalid_patch", message)
    await check_vector_value(request, command_context(request).settings, principal.tenant, patch)  # may set one
    return await submit(request, new_event(principal, PATCH, key, patch, ttl_ms=ttl_ms, **conditions))


async def append_observation(request: Request) -> Response:
    principal = authorize(request, WRITE)
    stream = check_key(request.path_params["name"], "stream")
    command_id = write_conditions(request).get("command_id")
    observation = await read_json(request, command_context(request).settings.max_value_bytes)
    event = new_event(principal, STREAM_APPEND, stream, observation, command_id=command_id)
    position = await command_context(request).log.append(event)
    body = {"event_id": event.id, "stream": stream, "position": str(position)}
    headers = {"X-AMS-Position": str(position)}
    if wants_async(request, principal.tenant, []):
        return json_response({**body, "status": "pending"}, 202, headers)
    [outcome] = await await_applied(request, [position], str(position))
    # A retried append (same Idempotency-Key) is a duplicate, answered with the original's version.
    return json_response({**body, **result_of(position, outcome)}, 200, headers)


routes = [
    Route("/v1/kv/{key:path}", put_value, methods=["PUT"]),
    Route("/v1/kv/{key:path}", delete_value, methods=["DELETE"]),
    Route("/v1/kv/{key:path}", patch_value, methods=["PATCH"]),
    Route("/v1/streams/{name:path}", append_observation, methods=["POST"]),
]
