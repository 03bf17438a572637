"""The command side of the HTTP API: validate, append to the log, and answer with the outcome.

A write is *strong* by default: it answers once the hot projection has applied it, with the fold's
outcome. With ``Prefer: respond-async`` it is *eventual* and answers 202 as soon as Kafka has it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ams.auth import WRITE, Principal, TokenVerifier
from ams.http import ApiError, json_response, read_json
from ams.settings import Settings
from commands.envelope import PUT, Event, now_ms, uuid7
from commands.keys import Position, check_key
from commands.log import EventLog
from commands.vectors import check_vector_value

MAX_TTL_SECONDS = 10 * 365 * 86400
MAX_IDEMPOTENCY_KEY = 200


class AppliedWatch(Protocol):
    """What the command side needs to know of the hot projection to answer a strong write."""

    async def wait_applied(self, positions: dict[int, int], timeout: float) -> bool: ...

    async def outcome(self, position: Position) -> dict[str, Any] | None: ...


@dataclass
class CommandContext:
    settings: Settings
    log: EventLog
    watch: AppliedWatch
    verifier: TokenVerifier


def _context(request: Request) -> CommandContext:
    context: CommandContext = request.app.state.commands
    return context


def _authorize(request: Request, scope: str) -> Principal:
    principal = _context(request).verifier.verify(request.headers.get("authorization"))
    principal.require(scope)
    return principal


def _version_header(request: Request, name: str) -> int | None:
    raw = request.headers.get(name)
    if raw is None:
        return None
    text = raw.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise ApiError(400, "invalid_header", f"{name} must be a version number (an ETag from a read), got {raw!r}")
    return int(text)


def _conditions(request: Request) -> dict[str, Any]:
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


def wants_async(request: Request) -> bool:
    return any(part.strip() == "respond-async" for part in request.headers.get("prefer", "").split(","))


async def submit(request: Request, event: Event) -> Response:
    """Append ``event``; answer 202 at once (eventual) or with the projection's outcome (strong)."""
    context = _context(request)
    position = await context.log.append(event)
    token = str(position)
    body: dict[str, Any] = {"event_id": event.id, "key": event.key, "position": token}
    headers = {"X-AMS-Position": token}
    if wants_async(request):
        return json_response({**body, "status": "pending"}, 202, headers)
    if not await context.watch.wait_applied({position.partition: position.offset}, context.settings.write_timeout):
        raise ApiError(
            504, "projection_timeout",
            f"the write is in the log at {token} but the hot projection did not apply it within "
            f"{context.settings.write_timeout:g}s; it will be applied, read with X-AMS-Min-Position: {token}",
            headers,
        )
    outcome = await context.watch.outcome(position)
    if outcome is None:
        return json_response({**body, "status": "accepted", "version": position.offset}, 200,
                             {**headers, "ETag": f'"{position.offset}"'})
    if outcome["status"] == "duplicate":
        return json_response({**body, "status": "duplicate", "version": outcome["version"],
                              "message": outcome["reason"]}, 200, {**headers, "ETag": f'"{outcome["version"]}"'})
    raise ApiError(409, "conflict", f"the write was not applied: {outcome['reason']}", headers)


async def put_value(request: Request) -> Response:
    principal = _authorize(request, WRITE)
    key = check_key(request.path_params["key"])
    conditions = _conditions(request)
    ttl_ms = _ttl_ms(request)
    value = await read_json(request, _context(request).settings.max_value_bytes)
    await check_vector_value(request, principal.tenant, value)
    event = Event(PUT, principal.tenant, key, value, id=uuid7(), ts=now_ms(), actor=principal.subject,
                  ttl_ms=ttl_ms, **conditions)
    return await submit(request, event)


routes = [
    Route("/v1/kv/{key:path}", put_value, methods=["PUT"]),
]
