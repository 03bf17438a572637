"""What every HTTP route shares: JSON errors, the body size limit, and reading a bounded JSON body."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ams.auth import Forbidden, Principal, Unauthorized
from commands.keys import InvalidName


def authorize(request: Request, scope: str) -> Principal:
    """The caller, from its bearer token, if it has ``scope``; kept on the request for what follows."""
    principal: Principal = request.app.state.verifier.verify(request.headers.get("authorization"))
    principal.require(scope)
    request.state.principal = principal
    return principal


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
    raise error


EXCEPTION_HANDLERS = {exc: handle_api_error for exc in (ApiError, Unauthorized, Forbidden, InvalidName, HTTPException)}


class BodyLimitMiddleware:
    """Refuses a body larger than ``limit`` bytes with 413, before it is read whole.

    A declared Content-Length over the limit is refused at once; a chunked body is counted as it
    streams in and cut off as soon as it passes the limit.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                await self._refuse(scope, receive, send)
                return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise ApiError(413, "body_too_large", self._message())
            return message

        await self.app(scope, counting_receive, send)

    def _message(self) -> str:
        return f"request body is larger than the limit of {self.limit} bytes"

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(413, "body_too_large", self._message())(scope, receive, send)


async def read_json(request: Request, limit: int) -> Any:
    """The request body parsed as JSON, or a 4xx that says why not."""
    body = await request.body()
    if len(body) > limit:
        raise ApiError(413, "value_too_large", f"the value is {len(body)} bytes; the limit is {limit} bytes")
    if not body:
        raise ApiError(400, "empty_body", "the request body is empty; send a JSON value")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise ApiError(400, "malformed_json", f"the request body is not valid JSON: {error}") from None
