"""The HTTP API's OpenAPI 3.0 description, served at ``GET /openapi.json``.

Written by hand beside the routes it describes (`commands.http`, `commands.batch`, `queries.*`,
`replay.http`, `queries.gateway`); `tests/test_openapi.py` checks that it names every route the gateway
serves, and `tests/test_api_fuzz.py` drives the live gateway from it.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ams.http import json_response

KEY_PATTERN = r"^[A-Za-z0-9_\-.:/@=+]{1,512}$"
PREFIX_PATTERN = r"^[A-Za-z0-9_\-.:/@=+]{0,512}$"
POSITIONS_PATTERN = r"^\d+:\d+(,\d+:\d+)*$"
SANDBOX_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,47}$"

ERROR = {"$ref": "#/components/schemas/Error"}
ANY_JSON: dict[str, Any] = {}  # any JSON value


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR}}}


def _ok(description: str, schema: dict[str, Any] | None = None, headers: dict[str, Any] | None = None,
        media_type: str = "application/json") -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": {media_type: {"schema": schema or ANY_JSON}}}
    if headers:
        answer["headers"] = headers
    return answer


def _header(name: str, description: str, pattern: str | None = None, **extra: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", **({"pattern": pattern} if pattern else {}), **extra}
    return {"name": name, "in": "header", "required": False, "description": description, "schema": schema}


def _query(name: str, description: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


def _path(name: str, description: str, pattern: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "pattern": pattern}}


# Errors every authenticated route may answer.
COMMON_ERRORS = {
    "400": _error("a bad parameter, header or name; the message says which"),
    "401": _error("no bearer token, or one that does not verify"),
    "403": _error("the token lacks the scope the route needs"),
    "404": _error("no such key, stream, sandbox (X-AMS-Sandbox) or route"),
    "429": _error("the tenant's request rate or watcher limit is exceeded; see Retry-After"),
    "503": _error("a store the answer needs is unavailable; retry"),
    "504": _error("the projection did not reach X-AMS-Min-Position in time"),
}
WRITE_ERRORS = {
    **COMMON_ERRORS,
    "409": _error("a condition (If-Match, If-None-Match) failed"),
    "413": _error("the body, the value or the batch is larger than the limit"),
    "415": _error("a PATCH that is not a JSON merge patch"),
    "422": _error("the body is JSON but not what the route takes"),
    "503": _error("a store the answer needs is unavailable, or Kafka refused the append; retry with the same "
                  "Idempotency-Key"),
    "504": _error("Kafka did not acknowledge the append in time (log_timeout), or the projection did not apply it "
                  "in time (projection_timeout); retry with the same Idempotency-Key"),
}

SANDBOX = _header("X-AMS-Sandbox", "serve the request from this sandbox of the caller's tenant", SANDBOX_PATTERN)
MIN_POSITION = _header("X-AMS-Min-Position", "the read reflects at least these positions ('0:15,3:42')",
                       POSITIONS_PATTERN)
IF_MATCH = _header("If-Match", "apply only if the key's version is this ETag", r'^(W/)?"?\d+"?$')
IF_NONE_MATCH = _header("If-None-Match", "'*': create the key only if it is absent", r"^\*$")
IDEMPOTENCY_KEY = _header("Idempotency-Key", "a command id: the same command is applied once",
                          r"^[!-~]{1,200}$")
PREFER = _header("Prefer", "'respond-async': answer 202 once the log has the write", r"^respond-async$")
WRITTEN = {"X-AMS-Position": {"description": "the write's consistency token", "schema": {"type": "string"}}}
VERSIONED = {**WRITTEN, "ETag": {"description": "the key's version", "schema": {"type": "string"}}}

KEY = _path("key", "a key: segments of A-Z a-z 0-9 _ - . : @ = + joined by '/'", KEY_PATTERN)
STREAM = _path("name", "a stream name (the key grammar)", KEY_PATTERN)
SANDBOX_NAME = _path("name", "a sandbox name", SANDBOX_PATTERN)
LIMIT = _query("limit", "page size", {"type": "integer", "minimum": 1, "maximum": 1000})
AS_OF = _query("as_of", "a position ('3:42', '0:15,3:42') or an RFC 3339 time with a timezone",
               {"type": "string"})
TTL = _query("ttl", "seconds until the value expires", {"type": "number", "exclusiveMinimum": True, "minimum": 0,
                                                        "maximum": 10 * 365 * 86400})

WRITE_RESULT = {
    "type": "object",
    "required": ["event_id", "key", "position", "status"],
    "properties": {"event_id": {"type": "string"}, "key": {"type": "string"}, "position": {"type": "string"},
                   "status": {"type": "string", "enum": ["accepted", "duplicate", "pending"]},
                   "version": {"type": "integer"}, "message": {"type": "string"}},
}
BATCH_OPERATION = {
    "type": "object",
    "required": ["op", "key"],
    "additionalProperties": False,
    "properties": {
        "op": {"type": "string", "enum": ["put", "delete", "patch"]},
        "key": {"type": "string", "pattern": KEY_PATTERN},
        "value": ANY_JSON,
        "patch": {"type": "object"},
        "if_version": {"type": "integer", "minimum": 0},
        "if_absent": {"type": "boolean"},
        "ttl": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 10 * 365 * 86400},
    },
}
SEARCH = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "embedding": {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 4096},
        "text": {"type": "string", "minLength": 1, "maxLength": 4096,
                 "description": "embedded on the server (semantic, hybrid) and split into words (keyword, hybrid)"},
        "mode": {"type": "string", "enum": ["semantic", "keyword", "hybrid"], "default": "semantic",
                 "description": "by meaning (embedding), by words (BM25), or both fused by reciprocal rank; "
                                'keyword and hybrid need "text"'},
        "k": {"type": "integer", "minimum": 1, "maximum": 1000},
        "filter": {"type": "object", "description": 'conditions on value fields and the key: {"kind": "fact", '
                   '"score": {"$gte": 0.5}, "meta.lang": {"$in": ["en", "fr"]}, "$key_prefix": "notes/"}; '
                   "operators $eq $ne $gt $gte $lt $lte $in"},
        "backend": {"type": "string", "enum": ["faiss", "milvus"],
                    "description": "milvus answers the semantic mode only, without $key_prefix"},
    },
}
RECORD_FILTER = {"type": "object", "description": 'conditions on value fields, as in vector search: {"kind": '
                 '"fact", "score": {"gte": 0.5}, "meta.lang": {"in": ["en", "fr"]}}'}
RECORDS_GET = {
    "type": "object", "required": ["keys"], "additionalProperties": False,
    "properties": {"keys": {"type": "array", "items": {"type": "string", "pattern": KEY_PATTERN},
                            "minItems": 1, "maxItems": 1000}},
}
RECORDS_SEARCH = {
    "type": "object", "additionalProperties": False,
    "properties": {"prefix": {"type": "string", "pattern": PREFIX_PATTERN}, "filter": RECORD_FILTER,
                   "limit": {"type": "integer", "minimum": 1, "maximum": 1000},
                   "offset": {"type": "integer", "minimum": 0, "maximum": 10000}},
}
RECORDS_PREFIXES = {
    "type": "object", "required": ["delimiter"], "additionalProperties": False,
    "properties": {"prefix": {"type": "string", "pattern": PREFIX_PATTERN},
                   "delimiter": {"type": "string", "pattern": r"^[A-Za-z0-9_\-.:/@=+]{1,8}$"},
                   "after": {"type": "string", "pattern": PREFIX_PATTERN},
                   "limit": {"type": "integer", "minimum": 1, "maximum": 1000}},
}
RECORD = {"type": "object", "required": ["key", "value", "version", "created", "updated", "expires"],
          "properties": {"key": {"type": "string"}, "value": ANY_JSON, "version": {"type": "integer"},
                         "created": {"type": "integer"}, "updated": {"type": "integer"},
                         "expires": {"type": "integer", "nullable": True}}}
RECORD_ERRORS = {**COMMON_ERRORS, "413": _error("the body is too large")}
SANDBOX_SPEC = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {"name": {"type": "string", "pattern": SANDBOX_PATTERN},
                   "key_prefix": {"type": "string", "pattern": PREFIX_PATTERN},
                   "until": {"type": "string", "description": "a position or an RFC 3339 time"}},
}


def _json_body(schema: dict[str, Any], media_types: tuple[str, ...] = ("application/json",)) -> dict[str, Any]:
    return {"required": True, "content": {media_type: {"schema": schema} for media_type in media_types}}


def _operation(summary: str, operation_id: str, scope: str, parameters: list[dict[str, Any]],
               responses: dict[str, Any], body: dict[str, Any] | None = None,
               errors: dict[str, Any] | None = None) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary, "operationId": operation_id, "parameters": parameters,
        "responses": {**responses, **(errors if errors is not None else COMMON_ERRORS)},
        "security": [{"bearer": [scope]}],
    }
    if body is not None:
        operation["requestBody"] = body
    return operation


PATHS: dict[str, dict[str, Any]] = {
    "/v1/kv/{key}": {
        "get": _operation(
            "the key's value exactly as written (now, or as_of a past position or time)", "getValue", "memory:read",
            [KEY, AS_OF, SANDBOX, MIN_POSITION],
            {"200": _ok("the value", headers=VERSIONED)}),
        "put": _operation(
            "write the key's value", "putValue", "memory:write",
            [KEY, TTL, SANDBOX, IF_MATCH, IF_NONE_MATCH, IDEMPOTENCY_KEY, PREFER],
            {"200": _ok("applied (or a duplicate)", WRITE_RESULT, VERSIONED),
             "202": _ok("in the log (Prefer: respond-async)", WRITE_RESULT, WRITTEN)},
            _json_body(ANY_JSON), WRITE_ERRORS),
        "patch": _operation(
            "merge a JSON merge patch (RFC 7396) into the key's value", "patchValue", "memory:write",
            [KEY, TTL, SANDBOX, IF_MATCH, IF_NONE_MATCH, IDEMPOTENCY_KEY, PREFER],
            {"200": _ok("applied (or a duplicate)", WRITE_RESULT, VERSIONED),
             "202": _ok("in the log (Prefer: respond-async)", WRITE_RESULT, WRITTEN)},
            _json_body({"type": "object"}, ("application/merge-patch+json", "application/json")), WRITE_ERRORS),
        "delete": _operation(
            "delete the key", "deleteValue", "memory:write",
            [KEY, SANDBOX, IF_MATCH, IDEMPOTENCY_KEY, PREFER],
            {"200": _ok("applied (or a duplicate)", WRITE_RESULT, VERSIONED),
             "202": _ok("in the log (Prefer: respond-async)", WRITE_RESULT, WRITTEN)},
            errors=WRITE_ERRORS),
    },
    "/v1/kv/{key}/history": {
        "get": _operation(
            "every event of the key with the fold's outcome and the state after it", "getHistory", "memory:read",
            [KEY, _query("order", "newest or oldest first", {"type": "string", "enum": ["newest", "oldest"]}),
             LIMIT, _query("cursor", "next_cursor of the previous page", {"type": "string",
                                                                           "pattern": r"^\d+:\d+$"}),
             SANDBOX, MIN_POSITION],
            {"200": _ok("a page of the history")}),
    },
    "/v1/kv": {
        "get": _operation(
            "the tenant's keys under a prefix, in key order (now, or as_of)", "listKeys", "memory:read",
            [_query("prefix", "a key prefix", {"type": "string", "pattern": PREFIX_PATTERN}), LIMIT,
             _query("cursor", "next_cursor of the previous page", {"type": "string"}), AS_OF, SANDBOX,
             MIN_POSITION],
            {"200": _ok("a page of keys")}),
    },
    "/v1/records/get": {
        "post": _operation(
            "many keys' live records with their metadata, in the order asked (null when absent)", "getRecords",
            "memory:read", [SANDBOX, MIN_POSITION],
            {"200": _ok("the records", {"type": "object", "properties": {"items": {
                "type": "array", "items": {**RECORD, "nullable": True}}}})},
            _json_body(RECORDS_GET), RECORD_ERRORS),
    },
    "/v1/records/search": {
        "post": _operation(
            "the live records under a key prefix whose values match a filter, in key order", "searchRecords",
            "memory:read", [SANDBOX, MIN_POSITION],
            {"200": _ok("a page of records", {"type": "object", "properties": {"items": {
                "type": "array", "items": RECORD}}})},
            _json_body(RECORDS_SEARCH), RECORD_ERRORS),
    },
    "/v1/records/prefixes": {
        "post": _operation(
            "the distinct parts of live keys under a prefix that end before the first delimiter after it",
            "listRecordPrefixes", "memory:read", [SANDBOX, MIN_POSITION],
            {"200": _ok("prefixes in key order, and next_after when there may be more", {"type": "object"})},
            _json_body(RECORDS_PREFIXES), RECORD_ERRORS),
    },
    "/v1/batch": {
        "post": _operation(
            "several writes appended in one transaction", "batch", "memory:write",
            [SANDBOX, IDEMPOTENCY_KEY, PREFER],
            {"200": _ok("each operation's outcome", headers=WRITTEN),
             "202": _ok("in the log (Prefer: respond-async)", headers=WRITTEN)},
            _json_body({"type": "object", "required": ["operations"], "additionalProperties": False,
                        "properties": {"operations": {"type": "array", "items": BATCH_OPERATION,
                                                      "minItems": 1, "maxItems": 500}}}),
            WRITE_ERRORS),
    },
    "/v1/streams/{name}": {
        "post": _operation(
            "append an observation to a stream", "appendObservation", "memory:write",
            [STREAM, SANDBOX, IDEMPOTENCY_KEY, PREFER],
            {"200": _ok("applied", headers=WRITTEN), "202": _ok("in the log", headers=WRITTEN)},
            _json_body(ANY_JSON), WRITE_ERRORS),
        "get": _operation(
            "a stream's observations in log order", "readStream", "memory:read",
            [STREAM, _query("after", "the position of the last entry read", {"type": "string",
                                                                              "pattern": r"^\d+:\d+$"}),
             LIMIT, SANDBOX, MIN_POSITION],
            {"200": _ok("a page of observations")}),
    },
    "/v1/events": {
        "get": _operation(
            "the tenant's audit feed in log order", "auditFeed", "memory:admin",
            [_query("after", "a cursor over the whole log ('0:15,3:42')", {"type": "string",
                                                                           "pattern": POSITIONS_PATTERN}),
             _query("key_prefix", "a key prefix", {"type": "string", "pattern": PREFIX_PATTERN}),
             _query("type", "an event type", {"type": "string",
                                              "enum": ["kv.put", "kv.patch", "kv.delete", "stream.append"]}),
             LIMIT, SANDBOX, MIN_POSITION],
            {"200": _ok("a page of events")}),
    },
    "/v1/watch": {
        "get": _operation(
            "every change under a prefix as Server-Sent Events", "watch", "memory:read",
            [_query("prefix", "a key prefix", {"type": "string", "pattern": PREFIX_PATTERN}),
             _header("Last-Event-ID", "resume after this event id", POSITIONS_PATTERN), SANDBOX],
            {"200": _ok("an endless event stream", {"type": "string"}, media_type="text/event-stream")}),
    },
    "/v1/positions": {
        "get": _operation(
            "how far each projection has applied the log", "positions", "memory:read", [],
            {"200": _ok("positions per projection and partition")}),
    },
    "/v1/vector/search": {
        "post": _operation(
            "search the tenant's memories by meaning, by words or both", "vectorSearch", "memory:read",
            [MIN_POSITION],
            {"200": _ok("hits {key, score, value, version}, best first",
                        {"type": "array", "items": {"type": "object"}})},
            _json_body(SEARCH), {**COMMON_ERRORS, "413": _error("the body or the text is too large"),
                                 "422": _error("a bad vector or dimension, or a mode the backend cannot answer")}),
    },
    "/v1/vector/inventory": {
        "get": _operation(
            "the version of each key with a live vector in this gateway's FAISS view", "vectorInventory",
            "memory:admin", [], {"200": _ok("keys and versions")}),
    },
    "/v1/sandboxes": {
        "post": _operation(
            "copy a slice of the tenant's log into a new sandbox", "createSandbox", "memory:admin", [],
            {"201": _ok("the sandbox")}, _json_body(SANDBOX_SPEC),
            {**COMMON_ERRORS, "409": _error("a sandbox of that name exists"), "413": _error("the body is too large"),
             "422": _error("not a sandbox description")}),
        "get": _operation(
            "the tenant's sandboxes", "listSandboxes", "memory:admin", [], {"200": _ok("the sandboxes")}),
    },
    "/v1/sandboxes/{name}": {
        "delete": _operation(
            "drop a sandbox", "dropSandbox", "memory:admin", [SANDBOX_NAME], {"200": _ok("dropped")}),
    },
    "/v1/sandboxes/{name}/diff": {
        "get": _operation(
            "how a sandbox differs from live", "diffSandbox", "memory:admin",
            [SANDBOX_NAME, _query("against", "what to compare with", {"type": "string", "enum": ["live", "source"]})],
            {"200": _ok("the differences")}),
    },
    "/v1/admin/rebuilds/{projection}": {
        "post": _operation(
            "rebuild a projection from offset 0 (operator tenant only)", "startRebuild", "memory:admin",
            [_path("projection", "redis, postgres, vectors or all", r"^[a-z]+$")],
            {"202": _ok("started")}, errors={**COMMON_ERRORS, "409": _error("a rebuild is running")}),
        "get": _operation(
            "the state of a projection's rebuild (operator tenant only)", "rebuildStatus", "memory:admin",
            [_path("projection", "redis, postgres, vectors or all", r"^[a-z]+$")], {"200": _ok("the rebuild's state")}),
    },
}

PUBLIC_PATHS: dict[str, dict[str, Any]] = {
    "/healthz": {"get": {"summary": "the process is up", "operationId": "healthz", "security": [],
                         "responses": {"200": _ok("ok")}}},
    "/readyz": {"get": {"summary": "the gateway can serve", "operationId": "readyz", "security": [],
                        "responses": {"200": _ok("ready"), "503": _ok("not ready")}}},
    "/metrics": {"get": {"summary": "Prometheus metrics", "operationId": "metrics", "security": [],
                         "responses": {"200": _ok("metrics", {"type": "string"}, media_type="text/plain")}}},
    "/openapi.json": {"get": {"summary": "this description", "operationId": "openapi", "security": [],
                              "responses": {"200": _ok("OpenAPI 3.0")}}},
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "AMS: Autonomous Memory System", "version": "1",
             "description": "Event-sourced memory for AI agents. The tenant comes only from the bearer token. "
                            'Every error is {"error": {"code": ..., "message": ...}}.'},
    "paths": {**PATHS, **PUBLIC_PATHS},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                                       "description": "OAuth2 bearer JWT; scopes memory:read, memory:write, "
                                                      "memory:admin"}},
        "schemas": {"Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "object", "required": ["code", "message"],
                                     "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}},
        }},
    },
    "security": [{"bearer": []}],
}


async def openapi(request: Request) -> Response:
    return json_response(DOCUMENT)


routes = [Route("/openapi.json", openapi, methods=["GET"])]
