"""Typed exceptions: each carries the HTTP status, the server's stable error code and its message.

The server answers every error as ``{"error": {"code": "...", "message": "..."}}``; ``str(exc)`` shows the
message, so an agent's logs say what was wrong without digging into the response.
"""

from __future__ import annotations


class AMSError(Exception):
    """Base of every error the client raises.

    ``status`` is the HTTP status (0 when no response arrived), ``code`` the server's error code,
    ``message`` its explanation, and ``position`` the consistency token the server attached, if any
    (a ``409`` or a write's ``504`` is still an event in the log at that position).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        position: str | None = None,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(status, code, message)
        self.status, self.code, self.message = status, code, message
        self.position, self.method, self.url = position, method, url

    def __str__(self) -> str:
        where = f" ({self.method} {self.url})" if self.method and self.url else ""
        return f"{self.status} {self.code}: {self.message}{where}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, code={self.code!r}, message={self.message!r})"


class TransportError(AMSError):
    """No answer from the gateway: connection refused, DNS failure, or the client's timeout."""


class InvalidRequest(AMSError):
    """A 4xx the caller can fix (bad key, bad header, malformed JSON, ...) that has no more specific class."""


class Unauthorized(InvalidRequest):
    """401: no token, or one that does not verify."""


class Forbidden(InvalidRequest):
    """403: a valid token without the scope the request needs."""


class KeyNotFound(InvalidRequest, KeyError):
    """404: the key does not exist, was deleted, or has expired (or belongs to another tenant)."""


class Conflict(InvalidRequest):
    """409: a conditional write (``if_version`` / ``if_absent``) lost; the log records it as rejected."""


class PayloadTooLarge(InvalidRequest):
    """413: the value, body or batch is larger than the server accepts."""


class ServerError(AMSError):
    """5xx: the gateway or a component behind it failed."""


class ConsistencyTimeout(ServerError):
    """504: the projection did not reach the required position in time.

    On a read, retry it. On a write, the write stands (it is in the log at ``position``); the client's
    session has recorded that position, so its next read waits for it.
    """


_BY_STATUS: dict[int, type[AMSError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: KeyNotFound,
    409: Conflict,
    413: PayloadTooLarge,
    504: ConsistencyTimeout,
}


def error_class(status: int) -> type[AMSError]:
    """The exception class for an HTTP error status."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if 400 <= status < 500:
        return InvalidRequest
    if status >= 500:
        return ServerError
    return AMSError
