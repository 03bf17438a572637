"""The one seam shared by the sync and the async client: requests and responses as plain data, no I/O.

Each builder below returns a :class:`Call`: the method, the path (relative to the base URL, which ends
in ``/v1``), query parameters, headers, the body, and the function that turns a successful response into
the result. A client only sends a call and hands the response to :func:`finish`, which records
consistency tokens, maps errors to typed exceptions and parses::

    response = http.request(call.method, call.path, params=call.params,
                            headers=request_headers(call, session), content=call.content)
    return finish(call, response, session)

A request whose answer never came because the connection failed (a keep-alive connection the server had
closed, a refused connection) is sent again, a few times with a short pause (:func:`should_retry`,
:func:`retry_delay`). That is safe for a write too: every write carries an ``Idempotency-Key`` (one made up
here when the caller gives none), the same on each attempt, so the log applies it once.
"""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from memory_client.errors import AMSError, KeyNotFound, TransportError, error_class
from memory_client.models import (
    BatchResult,
    Delete,
    KeyInfo,
    KeyPage,
    Operation,
    OpResult,
    Patch,
    Put,
    StreamPage,
    Versioned,
    WriteResult,
)
from memory_client.session import Session

T = TypeVar("T")

POSITION = "X-AMS-Position"
MIN_POSITION = "X-AMS-Min-Position"
JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
#: The error code of a 404/405 that did not come from an AMS route (the gateway lacks the endpoint).
NO_ROUTE = "no_route"
#: How many times a request that got no answer over a failed connection is sent again, by default.
DEFAULT_RETRIES = 3
#: The pause before the second retry; it grows by this much each time (the first retry goes at once: a
#: closed keep-alive connection is the usual cause, and a fresh connection fixes it).
RETRY_BACKOFF = 0.05
#: Failures of the connection itself, before any answer: the request can be sent again. A timeout is not
#: one of them (the server may still be working on it; the caller chose how long to wait).
UNANSWERED = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class _Raise(enum.Enum):
    RAISE = "raise"


#: ``get(key)``'s default: raise :class:`KeyNotFound` when the key is absent.
RAISE = _Raise.RAISE


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request to the gateway and how to read its answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    #: A read: it carries the session's ``X-AMS-Min-Position`` so it sees this client's writes.
    read: bool = False
    #: What a ``404`` from the API answers instead of raising :class:`KeyNotFound` (``get(key, default)``).
    on_missing: Callable[[], T] | None = None


# ---------------------------------------------------------------------------------------------- encoding


def encode_json(value: Any) -> bytes:
    """Compact JSON; NaN and infinities are refused (they are not JSON)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def quote_name(name: str) -> str:
    """A key or stream name as URL path segments.

    ``/`` stays a separator and ``: @ = +`` stay readable; everything else is percent-encoded. ``.`` and
    ``..`` segments are encoded too (``%2E``), or the HTTP library would collapse ``a/../b`` into ``b`` and
    write another key: the server then refuses them with its own message.
    """
    return "/".join(
        segment.replace(".", "%2E") if segment in (".", "..") else quote(segment, safe=":@=+")
        for segment in name.split("/")
    )


def _write_headers(
    *,
    if_version: int | None = None,
    if_absent: bool = False,
    idempotency_key: str | None = None,
    wait: bool = True,
    content_type: str | None = JSON,
) -> dict[str, str]:
    headers: dict[str, str] = {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if if_version is not None:
        headers["If-Match"] = f'"{int(if_version)}"'
    if if_absent:
        headers["If-None-Match"] = "*"
    headers["Idempotency-Key"] = idempotency_key if idempotency_key is not None else str(uuid.uuid4())
    if not wait:
        headers["Prefer"] = "respond-async"
    return headers


def _ttl_params(ttl: float | None) -> dict[str, str]:
    return {} if ttl is None else {"ttl": str(ttl)}


# ---------------------------------------------------------------------------------------------- parsing


def _json(response: httpx.Response) -> Any:
    return json.loads(response.content)


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def parse_write(response: httpx.Response) -> WriteResult:
    body = _json(response)
    return WriteResult(
        key=str(body["key"] if "key" in body else body["stream"]),
        status=str(body["status"]),
        position=str(body["position"]),
        event_id=str(body["event_id"]),
        version=_optional_int(body.get("version")),
        message=body.get("message"),
    )


def parse_value(response: httpx.Response) -> Any:
    return _json(response)


def parse_etag(etag: str | None) -> int:
    if etag is None:
        raise ValueError("the response has no ETag header (the value's version)")
    text = etag.strip().removeprefix("W/").strip('"')
    return int(text)


def parse_versioned(response: httpx.Response) -> Versioned:
    return Versioned(_json(response), parse_etag(response.headers.get("etag")))


def parse_key_page(response: httpx.Response) -> KeyPage:
    body = _json(response)
    items = [KeyInfo(str(item["key"]), int(item["version"])) for item in body["items"]]
    next_cursor = body.get("next_cursor")
    return KeyPage(items, None if next_cursor is None else str(next_cursor))


def parse_batch(response: httpx.Response) -> BatchResult:
    body = _json(response)
    results = [
        OpResult(
            key=str(item["key"]),
            status=str(item["status"]),
            position=str(item["position"]),
            version=_optional_int(item.get("version")),
            reason=item.get("reason"),
            op=item.get("op"),
        )
        for item in body["results"]
    ]
    return BatchResult(results, str(body["positions"]))


def parse_stream_page(response: httpx.Response) -> StreamPage:
    body = _json(response)
    return StreamPage(list(body["entries"]), body.get("next"))


def parse_matches(response: httpx.Response) -> list[dict[str, Any]]:
    body = _json(response)
    if not isinstance(body, list):
        raise ValueError(f"vector search answers a JSON list of matches, got {type(body).__name__}")
    return body


def parse_history(response: httpx.Response) -> list[dict[str, Any]]:
    body = _json(response)
    items = body["entries"]
    if not isinstance(items, list):
        raise ValueError(f"history answers a list of entries, got {type(items).__name__}")
    return items


def _items(response: httpx.Response) -> list[Any]:
    items = _json(response)["items"]
    if not isinstance(items, list):
        raise TypeError(f"items is not a list: {items!r}")
    return items


def parse_object(response: httpx.Response) -> dict[str, Any]:
    body = _json(response)
    if not isinstance(body, dict):
        raise ValueError(f"expected a JSON object, got {type(body).__name__}")
    return body


# ---------------------------------------------------------------------------------------------- builders


def set_value(
    key: str,
    value: Any,
    *,
    ttl: float | None = None,
    if_version: int | None = None,
    if_absent: bool = False,
    idempotency_key: str | None = None,
    wait: bool = True,
) -> Call[WriteResult]:
    """``PUT /kv/{key}``: store a JSON value (create-only with ``if_absent``, conditional with ``if_version``)."""
    headers = _write_headers(if_version=if_version, if_absent=if_absent, idempotency_key=idempotency_key, wait=wait)
    return Call("PUT", f"kv/{quote_name(key)}", parse_write, _ttl_params(ttl), headers, encode_json(value))


def get_value(key: str, default: Any = RAISE) -> Call[Any]:
    """``GET /kv/{key}``: the value exactly as written; ``default`` instead of KeyNotFound if given."""
    on_missing = None if default is RAISE else (lambda: default)
    return Call("GET", f"kv/{quote_name(key)}", parse_value, read=True, on_missing=on_missing)


def get_versioned(key: str) -> Call[Versioned]:
    """``GET /kv/{key}``: the value and its version (from ``ETag``)."""
    return Call("GET", f"kv/{quote_name(key)}", parse_versioned, read=True)


def delete_value(
    key: str, *, if_version: int | None = None, idempotency_key: str | None = None, wait: bool = True
) -> Call[WriteResult]:
    """``DELETE /kv/{key}``: a tombstone (conditional with ``if_version``)."""
    headers = _write_headers(if_version=if_version, idempotency_key=idempotency_key, wait=wait, content_type=None)
    return Call("DELETE", f"kv/{quote_name(key)}", parse_write, headers=headers)


def patch_value(
    key: str,
    patch: Mapping[str, Any],
    *,
    if_version: int | None = None,
    ttl: float | None = None,
    idempotency_key: str | None = None,
    wait: bool = True,
) -> Call[WriteResult]:
    """``PATCH /kv/{key}``: merge an RFC 7396 patch into the value (``null`` removes a field)."""
    headers = _write_headers(if_version=if_version, idempotency_key=idempotency_key, wait=wait,
                             content_type=MERGE_PATCH)
    return Call("PATCH", f"kv/{quote_name(key)}", parse_write, _ttl_params(ttl), headers, encode_json(dict(patch)))


def list_keys(prefix: str = "", *, limit: int = 100, cursor: str | None = None) -> Call[KeyPage]:
    """``GET /kv?prefix=&limit=&cursor=``: one page of the tenant's live keys, in key order."""
    params = {"prefix": prefix, "limit": str(limit)}
    if cursor is not None:
        params["cursor"] = cursor
    return Call("GET", "kv", parse_key_page, params, read=True)


def batch(
    operations: Iterable[Operation | Mapping[str, Any]],
    *,
    idempotency_key: str | None = None,
    wait: bool = True,
) -> Call[BatchResult]:
    """``POST /batch``: several puts, deletes and patches appended atomically (one Kafka transaction)."""
    body = {"operations": [op.to_json() if isinstance(op, Put | Delete | Patch) else dict(op) for op in operations]}
    headers = _write_headers(idempotency_key=idempotency_key, wait=wait)
    return Call("POST", "batch", parse_batch, headers=headers, content=encode_json(body))


def append(
    stream: str, observation: Any, *, idempotency_key: str | None = None, wait: bool = True
) -> Call[WriteResult]:
    """``POST /streams/{name}``: append an observation (any JSON) to the tenant's stream."""
    headers = _write_headers(idempotency_key=idempotency_key, wait=wait)
    return Call("POST", f"streams/{quote_name(stream)}", parse_write, headers=headers, content=encode_json(observation))


def read_stream(stream: str, *, after: Any = None, limit: int = 100) -> Call[StreamPage]:
    """``GET /streams/{name}?after=&limit=``: observations in order, after the position ``after``."""
    params = {"limit": str(limit)}
    if after is not None:
        params["after"] = str(after)
    return Call("GET", f"streams/{quote_name(stream)}", parse_stream_page, params, read=True)


def vector_search(
    embedding: Sequence[float], top_k: int = 5, *, filter: Mapping[str, Any] | None = None
) -> Call[list[dict[str, Any]]]:
    """``POST /vector/search``: the ``top_k`` nearest memories, ``[{key, score, value, version}]``."""
    body: dict[str, Any] = {"embedding": [float(x) for x in embedding], "k": top_k}
    if filter is not None:
        body["filter"] = dict(filter)
    return Call("POST", "vector/search", parse_matches, headers={"Content-Type": JSON}, content=encode_json(body),
                read=True)


def text_search(
    text: str, top_k: int = 5, *, mode: str | None = None, filter: Mapping[str, Any] | None = None
) -> Call[list[dict[str, Any]]]:
    """``POST /vector/search`` with ``{"text": ...}``: by meaning (``mode="semantic"``, the server's default,
    embedded by its built-in embedder), by words (``"keyword"``, BM25) or both (``"hybrid"``); ``filter`` on
    value fields (``{"kind": "fact", "score": {"$gte": 0.5}}``) and key prefix (``{"$key_prefix": "notes/"}``)."""
    body: dict[str, Any] = {"text": text, "k": top_k}
    if mode is not None:
        body["mode"] = mode
    if filter is not None:
        body["filter"] = dict(filter)
    return Call("POST", "vector/search", parse_matches, headers={"Content-Type": JSON}, content=encode_json(body),
                read=True)


def get_records(keys: Sequence[str]) -> Call[list[dict[str, Any] | None]]:
    """``POST /records/get``: each key's live record (key, value, version, created, updated, expires) or None."""
    body = encode_json({"keys": list(keys)})
    return Call("POST", "records/get", _items, headers={"Content-Type": JSON}, content=body, read=True)


def search_records(prefix: str, *, filter: Mapping[str, Any] | None = None, limit: int = 10,
                   offset: int = 0) -> Call[list[dict[str, Any]]]:
    """``POST /records/search``: the live records under ``prefix`` whose values match ``filter``, in key order."""
    body: dict[str, Any] = {"prefix": prefix, "limit": limit, "offset": offset}
    if filter:
        body["filter"] = dict(filter)
    return Call("POST", "records/search", _items, headers={"Content-Type": JSON}, content=encode_json(body), read=True)


def record_prefixes(prefix: str, delimiter: str, *, after: str | None = None,
                    limit: int = 1000) -> Call[dict[str, Any]]:
    """``POST /records/prefixes``: distinct parts of live keys under ``prefix`` before the next ``delimiter``."""
    body: dict[str, Any] = {"prefix": prefix, "delimiter": delimiter, "limit": limit}
    if after is not None:
        body["after"] = after
    return Call("POST", "records/prefixes", parse_object, headers={"Content-Type": JSON}, content=encode_json(body),
                read=True)


def history(key: str, *, limit: int = 100, order: str = "newest") -> Call[list[dict[str, Any]]]:
    """``GET /kv/{key}/history?limit=&order=``: the key's events, newest (or oldest) first."""
    if order not in ("newest", "oldest"):
        raise ValueError(f"order must be 'newest' or 'oldest', got {order!r}")
    params = {"limit": str(limit), "order": order}
    return Call("GET", f"kv/{quote_name(key)}/history", parse_history, params, read=True)


def positions() -> Call[dict[str, Any]]:
    """``GET /positions``: each projection's applied offset and lag per partition, and the log's heads."""
    return Call("GET", "positions", parse_object)


# ---------------------------------------------------------------------------------------------- the seam


def request_headers(call: Call[Any], session: Session) -> dict[str, str]:
    """The call's headers, plus the session's consistency token on a read."""
    headers = dict(call.headers)
    if call.read:
        token = session.token
        if token:
            headers[MIN_POSITION] = token
    return headers


def should_retry(error: httpx.TransportError, attempt: int, retries: int) -> bool:
    """Whether to send again after ``error`` on attempt ``attempt`` (0 for the first) of at most 1 + ``retries``."""
    return attempt < retries and isinstance(error, UNANSWERED)


def retry_delay(attempt: int) -> float:
    """Seconds to wait before resending after attempt ``attempt`` failed: 0, then 0.05, 0.1, ..."""
    return RETRY_BACKOFF * attempt


def _observe(session: Session, token: str | None) -> None:
    if not token:
        return
    try:
        session.observe(token)
    except ValueError:
        pass  # a malformed header must not turn a successful answer into an error


def _tokens_of(result: Any) -> str | None:
    if isinstance(result, WriteResult):
        return result.position
    if isinstance(result, BatchResult):
        return result.positions
    return None


def finish(call: Call[T], response: httpx.Response, session: Session | None) -> T:
    """Record the response's consistency token in ``session`` (None: don't), then parse or raise."""
    if session is not None:
        _observe(session, response.headers.get(POSITION))
    if response.is_success:
        try:
            result = call.parse(response)
        except (KeyError, TypeError, ValueError) as error:
            raise _error(AMSError, response, "invalid_response",
                         f"the gateway's answer does not follow the API contract ({error!r}): {_snippet(response)}"
                         ) from error
        if session is not None:
            _observe(session, _tokens_of(result))
        return result
    failure = error_from(response)
    if isinstance(failure, KeyNotFound) and failure.code != NO_ROUTE and call.on_missing is not None:
        return call.on_missing()
    raise failure


def error_from(response: httpx.Response) -> AMSError:
    """The typed exception for an error response, with the server's code and message."""
    status = response.status_code
    try:
        detail = _json(response)["error"]
        code, message = str(detail["code"]), str(detail["message"])
    except (KeyError, TypeError, ValueError):
        code, message = _untyped_error(response)
    return _error(error_class(status), response, code, message)


def _untyped_error(response: httpx.Response) -> tuple[str, str]:
    """Code and message of an error that is not AMS's JSON error (a missing route, a proxy's page)."""
    if response.status_code in (404, 405):
        return NO_ROUTE, (f"the gateway has no such route ({response.status_code} {response.reason_phrase}); "
                          "is it older than this client?")
    code = response.reason_phrase.lower().replace(" ", "_") or f"http_{response.status_code}"
    return code, _snippet(response) or response.reason_phrase


def _error(cls: type[AMSError], response: httpx.Response, code: str, message: str) -> AMSError:
    method, path = _request_line(response)
    return cls(response.status_code, code, message, position=response.headers.get(POSITION),
               method=method or None, url=path or None)


def _request_line(response: httpx.Response) -> tuple[str, str]:
    try:
        request = response.request
    except RuntimeError:  # a response built by hand, without its request
        return "", ""
    return request.method, request.url.raw_path.decode("ascii", "replace")


def _snippet(response: httpx.Response, limit: int = 300) -> str:
    text = response.content[:limit].decode("utf-8", "replace").strip()
    return text + ("..." if len(response.content) > limit else "")


def transport_error(call: Call[Any], error: httpx.TransportError) -> TransportError:
    """No answer: the gateway is unreachable or too slow for the client's timeout."""
    kind = "timeout" if isinstance(error, httpx.TimeoutException) else "transport"
    url = str(error.request.url) if _has_request(error) else call.path
    return TransportError(0, kind, f"{type(error).__name__}: {error or 'no answer from the gateway'}",
                          method=call.method, url=url)


def _has_request(error: httpx.TransportError) -> bool:
    try:
        error.request  # noqa: B018 - raises RuntimeError when the error carries no request
    except RuntimeError:
        return False
    return True
