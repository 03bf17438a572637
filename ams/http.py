"""What every HTTP route shares: JSON errors, the body size limit, and reading a bounded JSON body."""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ams.auth import Forbidden, Principal, Unauthorized
from commands.keys import InvalidName
from commands.log import LogUnavailable


def authorize(request: Request, scope: str) -> Principal:
    """The caller, from its bearer token, if it has ``scope`` and its tenant is within its request rate;
    kept on the request for what follows."""
    principal: Principal = request.app.state.verifier.verify(request.headers.get("authorization"))
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is not None:
        limiter.take(principal.tenant)
    principal.require(scope)
    request.state.principal = principal
    return principal


class RateLimiter:
    """A token bucket per tenant, in this gateway's memory: ``rate`` requests a second, ``burst`` at once.

    The tenant is known only once its token is verified, so `authorize` asks; a request over the limit is a
    429 with ``Retry-After``. At most ``MAX_TENANTS`` buckets are kept: the least recently used goes first
    (and comes back full, which only errs towards letting a tenant through).
    """

    MAX_TENANTS = 100_000

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, max(1, burst)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tenant -> (tokens, when)

    def take(self, tenant: str) -> None:
        now = time.monotonic()
        tokens, then = self._buckets.pop(tenant, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        if tokens < 1:
            self._buckets[tenant] = (tokens, now)
            wait = math.ceil((1 - tokens) / self.rate) if self.rate > 0 else 60
            raise ApiError(429, "rate_limited", f"tenant {tenant!r} is over its limit of {self.rate:g} requests a "
                           f"second (bursts of {self.burst}); retry after {wait}s", {"Retry-After": str(wait)})
        self._buckets[tenant] = (tokens - 1, now)
        if len(self._buckets) > self.MAX_TENANTS:
            self._buckets.popitem(last=False)


class ApiError(Exception):
    """An error the client can act on: its status, a stable code and a message that says what was wrong."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_response({"error": {"code": code, "message": message}}, status, headers)


async def handle_api_error(request: Request, error: Exception) -> Response:
    if isinstance(error, HTTPException):  # Starlette's own: no such route, method not allowed
        code = {404: "no_route", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        message = f"{request.method} {request.url.path}: {error.detail}"
        return error_response(error.status_code, code, message, dict(error.headers or {}))
    if isinstance(error, ApiError):
        return error_response(error.status, error.code, error.message, error.headers)
    if isinstance(error, Unauthorized):
        return error_response(401, "unauthorized", str(error), {"WWW-Authenticate": 'Bearer realm="ams"'})
    if isinstance(error, Forbidden):
        return error_response(403, "forbidden", str(error))
    if isinstance(error, InvalidName):
        return error_response(400, "invalid_name", str(error))
    if isinstance(error, LogUnavailable):
        outcome = ("It may still be appended: retry with the same Idempotency-Key, and a write that was "
                   "appended is applied once.")
        if error.timed_out:
            return error_response(504, "log_timeout", f"{error}. {outcome}")
        return error_response(503, "log_unavailable", f"{error}. {outcome}", {"Retry-After": "1"})
    raise error


EXCEPTION_HANDLERS = {
    exc: handle_api_error for exc in (ApiError, Unauthorized, Forbidden, InvalidName, LogUnavailable, HTTPException)
}


class BodyLimitMiddleware:
    """Refuses a body larger than ``limit`` bytes with 413, before it is read whole, and one that does not
    arrive within ``timeout`` seconds with 408.

    A declared Content-Length over the limit is refused at once; a chunked body is counted as it
    streams in and cut off as soon as it passes the limit. The timeout runs from the first read of the body
    to its last part; reads after that (a streaming response waiting for the client to leave) are not timed.
    """

    def __init__(self, app: ASGIApp, limit: int, timeout: float) -> None:
        self.app, self.limit, self.timeout = app, limit, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                await self._refuse(scope, receive, send)
                return
        received, deadline, complete = 0, 0.0, False

        async def counting_receive() -> Message:
            nonlocal received, deadline, complete
            if complete:
                return await receive()
            deadline = deadline or asyncio.get_running_loop().time() + self.timeout
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise ApiError(408, "body_timeout", f"the request body did not arrive within {self.timeout:g}s, "
                               f"{received} bytes came") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise ApiError(413, "body_too_large", self._message())
                complete = not message.get("more_body", False)
            else:
                complete = True
            return message

        await self.app(scope, counting_receive, send)

    def _message(self) -> str:
        return f"request body is larger than the limit of {self.limit} bytes"

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(413, "body_too_large", self._message())(scope, receive, send)


MAX_JSON_DEPTH = 64


def _too_deep(value: Any, limit: int) -> bool:
    """Whether ``value`` nests arrays and objects more than ``limit`` levels deep (walked without recursion)."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


async def read_json(request: Request, limit: int) -> Any:
    """The request body parsed as JSON, or a 4xx that says why not.

    Nesting is bounded at ``MAX_JSON_DEPTH`` levels: orjson refuses to parse past 1024 levels and to
    write past 254, so a deeper value could be accepted here and fail later in a projection.
    """
    body = await request.body()
    if len(body) > limit:
        raise ApiError(413, "value_too_large", f"the value is {len(body)} bytes; the limit is {limit} bytes")
    if not body:
        raise ApiError(400, "empty_body", "the request body is empty; send a JSON value")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        if "depth limit" in str(error):
            raise ApiError(400, "json_too_deep", f"the JSON value nests more than {MAX_JSON_DEPTH} levels") from None
        raise ApiError(400, "malformed_json", f"the request body is not valid JSON: {error}") from None
    if _too_deep(value, MAX_JSON_DEPTH):
        raise ApiError(400, "json_too_deep", f"the JSON value nests more than {MAX_JSON_DEPTH} levels")
    return value
