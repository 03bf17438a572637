"""The shared seam without any I/O: call builders, parsers, error mapping and session tokens."""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

import httpx
import pytest

from memory_client import (
    AMSError,
    Conflict,
    ConsistencyTimeout,
    Delete,
    Forbidden,
    InvalidRequest,
    KeyNotFound,
    Patch,
    PayloadTooLarge,
    Put,
    ServerError,
    Unauthorized,
    WriteResult,
    calls,
)
from memory_client.session import Session, format_token, parse_token

BASE = "http://gateway.test/v1/"


def answer(call: calls.Call[Any], status: int = 200, *, json_body: Any = None, content: bytes | None = None,
           headers: dict[str, str] | None = None) -> httpx.Response:
    """The response a gateway would give to ``call``, tied to its request like httpx does."""
    request = httpx.Request(call.method, BASE + call.path, params=call.params)
    if json_body is not None:
        return httpx.Response(status, json=json_body, headers=headers, request=request)
    return httpx.Response(status, content=content or b"", headers=headers, request=request)


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


WRITTEN = {"event_id": "e1", "key": "k", "position": "3:42", "status": "accepted", "version": 42}


# ----------------------------------------------------------------------------------------- names


@pytest.mark.parametrize(("name", "path"), [
    ("session:1234", "session:1234"),
    ("agents/a1/notes@v=2+x", "agents/a1/notes@v=2+x"),
    ("a.b_c-d", "a.b_c-d"),
    ("has space", "has%20space"),
    ("100%", "100%25"),
    ("q?x#y&z", "q%3Fx%23y%26z"),
    ("café", "caf%C3%A9"),
    ("a/../b", "a/%2E%2E/b"),
    ("./a", "%2E/a"),
    ("a/..b", "a/..b"),
])
def test_names_are_quoted_so_slash_separates_and_nothing_is_normalised_away(name: str, path: str) -> None:
    assert calls.quote_name(name) == path


def test_a_dot_segment_survives_httpx_instead_of_addressing_another_key() -> None:
    request = httpx.Client(base_url=BASE).build_request("GET", calls.get_value("a/../b").path)
    assert request.url.raw_path == b"/v1/kv/a/%2E%2E/b"


# ----------------------------------------------------------------------------------------- builders


def test_set_is_a_put_of_the_json_value_with_no_condition_by_default() -> None:
    call = calls.set_value("session:1234", {"step": 3, "note": None})
    assert (call.method, call.path, call.params) == ("PUT", "kv/session:1234", {})
    assert json.loads(call.content or b"") == {"step": 3, "note": None}
    assert call.headers == {"Content-Type": "application/json", "Idempotency-Key": call.headers["Idempotency-Key"]}
    assert not call.read


def test_every_write_carries_an_idempotency_key_made_up_when_none_is_given() -> None:
    """So that a write resent after a failed connection is applied once (the client reuses the call)."""
    writes: list[calls.Call[Any]] = [
        calls.set_value("k", 1), calls.delete_value("k"), calls.patch_value("k", {}), calls.batch([]),
        calls.append("s", 1),
    ]
    made_up = [call.headers["Idempotency-Key"] for call in writes]
    assert all(uuid.UUID(key).version == 4 for key in made_up)
    assert len(set(made_up)) == len(writes)
    assert calls.set_value("k", 1).headers["Idempotency-Key"] not in made_up


def test_set_maps_every_option_to_its_header_or_parameter() -> None:
    call = calls.set_value("k", [1], ttl=1.5, if_version=12, if_absent=True, idempotency_key="cmd-1", wait=False)
    assert call.params == {"ttl": "1.5"}
    assert call.headers == {"Content-Type": "application/json", "If-Match": '"12"', "If-None-Match": "*",
                            "Idempotency-Key": "cmd-1", "Prefer": "respond-async"}


@pytest.mark.parametrize("value", [None, 0, "", [], {}, "snowman ☃", 1.25])
def test_any_json_value_is_a_body_even_null_and_empty_ones(value: Any) -> None:
    assert json.loads(calls.set_value("k", value).content or b"") == value


def test_values_that_are_not_json_are_refused_before_sending() -> None:
    with pytest.raises(ValueError):
        calls.set_value("k", math.nan)
    with pytest.raises(TypeError):
        calls.set_value("k", {1, 2})


def test_reads_carry_the_session_and_writes_do_not() -> None:
    reads: list[calls.Call[Any]] = [
        calls.get_value("k"), calls.get_versioned("k"), calls.list_keys(), calls.read_stream("s"),
        calls.vector_search([0.0]), calls.text_search("x"), calls.history("k"),
    ]
    writes: list[calls.Call[Any]] = [
        calls.set_value("k", 1), calls.delete_value("k"), calls.patch_value("k", {}), calls.batch([]),
        calls.append("s", 1),
    ]
    assert all(call.read for call in reads)
    assert not any(call.read for call in writes)
    assert not calls.positions().read


def test_delete_has_no_body_and_takes_a_condition() -> None:
    call = calls.delete_value("notes/1", if_version=7, idempotency_key="d", wait=False)
    assert (call.method, call.path, call.content) == ("DELETE", "kv/notes/1", None)
    assert call.headers == {"If-Match": '"7"', "Idempotency-Key": "d", "Prefer": "respond-async"}


def test_patch_is_a_merge_patch() -> None:
    call = calls.patch_value("k", {"a": None, "b": {"c": 1}}, if_version=3, ttl=60)
    assert (call.method, call.path, call.params) == ("PATCH", "kv/k", {"ttl": "60"})
    assert call.headers["Content-Type"] == "application/merge-patch+json"
    assert call.headers["If-Match"] == '"3"'
    assert json.loads(call.content or b"") == {"a": None, "b": {"c": 1}}


def test_listing_pages_with_prefix_limit_and_cursor() -> None:
    assert calls.list_keys("notes/", limit=10).params == {"prefix": "notes/", "limit": "10"}
    call = calls.list_keys("notes/", limit=10, cursor="bm90ZXMvOQ==")
    assert (call.method, call.path) == ("GET", "kv")
    assert call.params == {"prefix": "notes/", "limit": "10", "cursor": "bm90ZXMvOQ=="}


def test_batch_operations_serialise_only_the_options_given() -> None:
    call = calls.batch([
        Put("a", {"x": 1}),
        Put("b", 2, if_version=5, if_absent=True, ttl=30),
        Delete("c"),
        Delete("d", if_version=9),
        Patch("e", {"y": None}, if_version=1, ttl=2.5),
        {"op": "put", "key": "f", "value": None},
    ], idempotency_key="batch-1", wait=False)
    assert (call.method, call.path) == ("POST", "batch")
    assert call.headers == {"Content-Type": "application/json", "Idempotency-Key": "batch-1",
                            "Prefer": "respond-async"}
    assert json.loads(call.content or b"") == {"operations": [
        {"op": "put", "key": "a", "value": {"x": 1}},
        {"op": "put", "key": "b", "value": 2, "if_version": 5, "if_absent": True, "ttl": 30},
        {"op": "delete", "key": "c"},
        {"op": "delete", "key": "d", "if_version": 9},
        {"op": "patch", "key": "e", "patch": {"y": None}, "if_version": 1, "ttl": 2.5},
        {"op": "put", "key": "f", "value": None},
    ]}


def test_streams_append_and_read_by_name() -> None:
    append = calls.append("agent-7/steps", {"tool": "search"}, idempotency_key="s1")
    assert (append.method, append.path) == ("POST", "streams/agent-7/steps")
    assert append.headers["Idempotency-Key"] == "s1"
    assert json.loads(append.content or b"") == {"tool": "search"}
    read = calls.read_stream("agent-7/steps", after="0:12", limit=50)
    assert (read.method, read.path, read.params) == ("GET", "streams/agent-7/steps", {"after": "0:12", "limit": "50"})
    assert calls.read_stream("s").params == {"limit": "100"}


def test_vector_search_sends_floats_and_k() -> None:
    call = calls.vector_search((1, 0.5, -2), 3)
    assert (call.method, call.path) == ("POST", "vector/search")
    assert json.loads(call.content or b"") == {"embedding": [1.0, 0.5, -2.0], "k": 3}
    filtered = calls.vector_search([0.1], filter={"kind": "fact"})
    assert json.loads(filtered.content or b"") == {"embedding": [0.1], "k": 5, "filter": {"kind": "fact"}}
    assert json.loads(calls.text_search("red apples", 2).content or b"") == {"text": "red apples", "k": 2}
    hybrid = calls.text_search("red apples", mode="hybrid", filter={"$key_prefix": "fruit/"})
    assert json.loads(hybrid.content or b"") == {"text": "red apples", "k": 5, "mode": "hybrid",
                                                 "filter": {"$key_prefix": "fruit/"}}


def test_history_and_positions() -> None:
    call = calls.history("notes/1", limit=20, order="oldest")
    assert (call.path, call.params) == ("kv/notes/1/history", {"limit": "20", "order": "oldest"})
    with pytest.raises(ValueError, match="newest"):
        calls.history("k", order="sideways")
    assert (calls.positions().method, calls.positions().path) == ("GET", "positions")


# ----------------------------------------------------------------------------------------- parsers


def test_a_write_answer_is_a_typed_result() -> None:
    call = calls.set_value("k", 1)
    result = calls.finish(call, answer(call, json_body=WRITTEN), None)
    assert result == WriteResult(key="k", status="accepted", position="3:42", event_id="e1", version=42)
    assert (result.partition, result.offset, result.pending) == (3, 42, False)


def test_pending_duplicate_and_stream_answers() -> None:
    call = calls.set_value("k", 1, wait=False)
    pending = calls.finish(call, answer(call, 202, json_body={**WRITTEN, "status": "pending", "version": None}), None)
    assert pending.pending and pending.version is None
    duplicate = {**WRITTEN, "status": "duplicate", "version": 40, "message": "command cmd-1 was applied at 40"}
    result = calls.finish(call, answer(call, json_body=duplicate), None)
    assert (result.status, result.version, result.message) == ("duplicate", 40, "command cmd-1 was applied at 40")
    append = calls.append("steps", {})
    body = {"event_id": "e2", "stream": "steps", "position": "1:7", "status": "accepted"}
    assert calls.finish(append, answer(append, json_body=body), None).key == "steps"


def test_get_returns_the_value_and_get_versioned_reads_the_etag() -> None:
    call = calls.get_value("k")
    assert calls.finish(call, answer(call, content=b'{"a":[1,2.5,null]}'), None) == {"a": [1, 2.5, None]}
    versioned = calls.get_versioned("k")
    for etag in ('"12"', 'W/"12"'):
        result = calls.finish(versioned, answer(versioned, content=b"null", headers={"ETag": etag}), None)
        assert (result.value, result.version) == (None, 12)


def test_pages_batches_streams_and_matches_are_parsed() -> None:
    page_call = calls.list_keys()
    page = calls.finish(page_call, answer(page_call, json_body={
        "items": [{"key": "a", "version": 1}, {"key": "b", "version": 9}], "next_cursor": "Yg=="}), None)
    assert [(item.key, item.version) for item in page.items] == [("a", 1), ("b", 9)]
    assert page.next_cursor == "Yg=="

    batch_call = calls.batch([Put("a", 1), Put("b", 2, if_version=1)])
    result = calls.finish(batch_call, answer(batch_call, json_body={"results": [
        {"key": "a", "op": "kv.put", "status": "accepted", "version": 15, "position": "0:15"},
        {"key": "b", "op": "kv.put", "status": "rejected", "reason": "version mismatch", "position": "3:42"},
    ], "positions": "0:15,3:42"}), None)
    assert not result.ok
    assert [r.key for r in result.rejected] == ["b"]
    assert result.rejected[0].reason == "version mismatch"
    assert result.results[0].version == 15

    stream_call = calls.read_stream("s")
    stream = calls.finish(stream_call, answer(stream_call, json_body={"entries": [{"n": 1}], "next": "0:5"}), None)
    assert (stream.items, stream.next) == ([{"n": 1}], "0:5")

    search = calls.vector_search([1.0], 1)
    matches = [{"key": "doc:1", "score": 0.9, "value": {"text": "hi"}, "version": 3}]
    assert calls.finish(search, answer(search, json_body=matches), None) == matches


def test_an_answer_outside_the_contract_is_an_error_not_garbage() -> None:
    search = calls.vector_search([1.0], 1)
    with pytest.raises(AMSError) as raised:
        calls.finish(search, answer(search, json_body={"results": []}), None)
    assert raised.value.code == "invalid_response"
    write = calls.set_value("k", 1)
    with pytest.raises(AMSError, match="invalid_response"):
        calls.finish(write, answer(write, content=b"<html>proxy</html>"), None)


# ----------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("status", "code", "kind"), [
    (400, "invalid_name", InvalidRequest),
    (401, "unauthorized", Unauthorized),
    (403, "forbidden", Forbidden),
    (404, "not_found", KeyNotFound),
    (409, "conflict", Conflict),
    (413, "value_too_large", PayloadTooLarge),
    (415, "unsupported_media_type", InvalidRequest),
    (422, "invalid_batch", InvalidRequest),
    (500, "internal", ServerError),
    (503, "unavailable", ServerError),
    (504, "consistency_timeout", ConsistencyTimeout),
])
def test_each_error_status_raises_its_class_with_the_servers_code_and_message(
        status: int, code: str, kind: type[AMSError]) -> None:
    call = calls.set_value("session:1", 1)
    message = f"what went wrong ({code})"
    with pytest.raises(kind) as raised:
        calls.finish(call, answer(call, status, json_body=error_body(code, message)), None)
    error = raised.value
    assert (error.status, error.code, error.message) == (status, code, message)
    assert message in str(error) and str(status) in str(error) and "PUT /v1/kv/session:1" in str(error)
    assert isinstance(error, AMSError)


def test_the_hierarchy_lets_callers_catch_broadly() -> None:
    assert issubclass(KeyNotFound, KeyError)
    assert issubclass(ConsistencyTimeout, ServerError)
    assert all(issubclass(kind, InvalidRequest) for kind in (Unauthorized, Forbidden, KeyNotFound, Conflict,
                                                             PayloadTooLarge))
    error = KeyNotFound(404, "not_found", "key 'k' does not exist")
    assert str(error) == "404 not_found: key 'k' does not exist"


def test_a_lost_conditional_write_carries_its_position() -> None:
    call = calls.set_value("k", 1, if_version=1)
    response = answer(call, 409, json_body=error_body("conflict", "the write was not applied: key is at version 9"),
                      headers={"X-AMS-Position": "2:10"})
    session = Session()
    with pytest.raises(Conflict) as raised:
        calls.finish(call, response, session)
    assert raised.value.position == "2:10"
    assert session.token == "2:10"  # the rejected event is in the log: later reads wait for it too


def test_get_with_a_default_returns_it_only_for_an_absent_key() -> None:
    call = calls.get_value("k", default={"fresh": True})
    assert calls.finish(call, answer(call, 404, json_body=error_body("not_found", "no")), None) == {"fresh": True}
    assert calls.finish(calls.get_value("k", None), answer(call, 404, json_body=error_body("not_found", "no")),
                        None) is None
    with pytest.raises(KeyNotFound) as raised:  # a gateway without the route is not an absent key
        calls.finish(call, answer(call, 404, content=b"Not Found"), None)
    assert raised.value.code == calls.NO_ROUTE
    with pytest.raises(Unauthorized):
        calls.finish(call, answer(call, 401, json_body=error_body("unauthorized", "bad token")), None)


def test_errors_that_are_not_the_apis_json_still_say_what_happened() -> None:
    call = calls.read_stream("s")
    with pytest.raises(InvalidRequest) as raised:
        calls.finish(call, answer(call, 405, content=b"Method Not Allowed"), None)
    assert raised.value.code == calls.NO_ROUTE
    assert "no such route (405 Method Not Allowed)" in str(raised.value)
    assert "(GET /v1/streams/s?limit=100)" in str(raised.value)
    with pytest.raises(ServerError) as server:
        calls.finish(call, answer(call, 502, content=b"<html>bad gateway from the proxy</html>"), None)
    assert server.value.code == "bad_gateway"
    assert "bad gateway from the proxy" in str(server.value)


def test_a_response_without_its_request_still_maps() -> None:
    error = calls.error_from(httpx.Response(409, json=error_body("conflict", "lost")))
    assert isinstance(error, Conflict) and str(error) == "409 conflict: lost"


# ----------------------------------------------------------------------------------------- session


def test_tokens_parse_and_format() -> None:
    assert parse_token("0:15,3:42") == {0: 15, 3: 42}
    assert parse_token(" 3:40 , 3:42,") == {3: 42}
    assert parse_token("") == {}
    assert format_token({3: 42, 0: 15}) == "0:15,3:42"
    for bad in ("3", "a:1", "1:-2", "1:2:3", '"0:15"'):
        with pytest.raises(ValueError, match="partition:offset"):
            parse_token(bad)


def test_the_session_keeps_the_newest_offset_per_partition() -> None:
    session = Session()
    assert session.token is None
    session.observe("3:42")
    session.observe("0:15,3:40")
    session.observe("3:41")
    assert session.token == "0:15,3:42"
    assert session.positions == {0: 15, 3: 42}
    session.clear()
    assert session.token is None


def test_finish_records_positions_from_headers_and_bodies() -> None:
    session = Session()
    write = calls.set_value("k", 1)
    calls.finish(write, answer(write, json_body=WRITTEN, headers={"X-AMS-Position": "3:42"}), session)
    batch = calls.batch([Put("a", 1)])
    body = {"results": [{"key": "a", "status": "pending", "position": "0:15"}], "positions": "0:15,5:7"}
    calls.finish(batch, answer(batch, 202, json_body=body), session)  # no header: the body still counts
    read = calls.get_value("k")
    calls.finish(read, answer(read, content=b"1", headers={"X-AMS-Position": "garbage"}), session)  # ignored
    assert session.token == "0:15,3:42,5:7"

    untracked = Session()
    calls.finish(write, answer(write, json_body=WRITTEN, headers={"X-AMS-Position": "3:42"}), None)
    assert untracked.token is None


def test_request_headers_add_the_token_to_reads_only() -> None:
    session = Session()
    assert "X-AMS-Min-Position" not in calls.request_headers(calls.get_value("k"), session)
    session.observe("0:15,3:42")
    assert calls.request_headers(calls.get_value("k"), session)["X-AMS-Min-Position"] == "0:15,3:42"
    assert "X-AMS-Min-Position" not in calls.request_headers(calls.set_value("k", 1), session)
    write = calls.set_value("k", 1, if_version=3)
    assert calls.request_headers(write, session) == write.headers
    assert calls.request_headers(write, session) is not write.headers  # the call itself is never mutated
