"""Both clients over httpx.MockTransport: what goes on the wire, what comes back, and the session token.

Every test runs against the sync and the async client alike (the ``client`` fixture), since both are one
``execute`` over the same calls.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from memory_client import (
    AsyncMemoryClient,
    Conflict,
    ConsistencyTimeout,
    KeyInfo,
    KeyNotFound,
    MemoryClient,
    Put,
    TransportError,
    Unauthorized,
)
from memory_client.calls import DEFAULT_RETRIES
from memory_client.client import api_url

BASE = "http://gateway.test/v1"
TOKEN = "header.payload.signature"

Reply = httpx.Response | Callable[[httpx.Request], httpx.Response]


class Gateway:
    """A MockTransport handler: answers with the replies queued, in order, and records every request."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.replies: list[Reply] = []

    def reply(self, status: int = 200, body: Any = None, *, content: bytes | None = None,
              headers: dict[str, str] | None = None) -> None:
        if content is None:
            content = json.dumps(body).encode()
        self.replies.append(httpx.Response(status, content=content, headers=headers))

    def written(self, position: str, key: str = "k", status: str = "accepted") -> None:
        """Queue the answer to a write at ``position``."""
        code = 202 if status == "pending" else 200
        version = None if status == "pending" else int(position.split(":")[1])
        self.reply(code, {"event_id": "e", "key": key, "position": position, "status": status, "version": version},
                   headers={"X-AMS-Position": position})

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.replies:
            raise AssertionError(f"unexpected request {request.method} {request.url}")
        reply = self.replies.pop(0)
        return reply(request) if callable(reply) else reply

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]


class Either:
    """One face for both clients: ``await either.call("set", ...)`` works for sync and async alike."""

    def __init__(self, client: MemoryClient | AsyncMemoryClient) -> None:
        self.client = client

    async def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.client, name)(*args, **kwargs)
        return await result if inspect.isawaitable(result) else result

    async def keys(self, *args: Any, **kwargs: Any) -> list[KeyInfo]:
        if isinstance(self.client, AsyncMemoryClient):
            return [item async for item in self.client.keys(*args, **kwargs)]
        return list(self.client.keys(*args, **kwargs))


def make(flavor: str, gateway: Gateway, **options: Any) -> MemoryClient | AsyncMemoryClient:
    transport = httpx.MockTransport(gateway)
    if flavor == "sync":
        return MemoryClient(BASE, TOKEN, transport=transport, **options)
    return AsyncMemoryClient(BASE, TOKEN, transport=transport, **options)


async def close(client: MemoryClient | AsyncMemoryClient) -> None:
    if isinstance(client, AsyncMemoryClient):
        await client.aclose()
    else:
        client.close()


@pytest.fixture
def gateway() -> Gateway:
    return Gateway()


@pytest.fixture(params=["sync", "async"])
def flavor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def client(flavor: str, gateway: Gateway) -> AsyncIterator[Either]:
    memory = make(flavor, gateway)
    yield Either(memory)
    await close(memory)


# ----------------------------------------------------------------------------------------- the seed API


async def test_the_seed_documents_calls_work_unchanged(client: Either, gateway: Gateway) -> None:
    gateway.written("5:10", key="session:1234")
    gateway.reply(200, {"step": 3}, headers={"ETag": '"10"', "X-AMS-Position": "5:10"})
    gateway.reply(200, [{"key": "doc:1", "score": 0.93, "value": {"text": "hi"}, "version": 4}])

    written = await client.call("set", "session:1234", {"step": 3})
    assert (written.status, written.version, written.position) == ("accepted", 10, "5:10")
    assert await client.call("get", "session:1234") == {"step": 3}
    matches = await client.call("query", [0.1, 0.2], 1)
    assert matches[0]["key"] == "doc:1"

    put, get, search = gateway.requests
    assert (put.method, put.url.path, json.loads(put.content)) == ("PUT", "/v1/kv/session:1234", {"step": 3})
    assert put.headers["Authorization"] == f"Bearer {TOKEN}"
    assert put.headers["Content-Type"] == "application/json"
    assert (get.method, get.url.path) == ("GET", "/v1/kv/session:1234")
    assert (search.method, search.url.path) == ("POST", "/v1/vector/search")
    assert json.loads(search.content) == {"embedding": [0.1, 0.2], "k": 1}


@pytest.mark.parametrize(("given", "root"), [
    ("http://h:8787/v1", "http://h:8787/v1/"),
    ("http://h:8787/v1/", "http://h:8787/v1/"),
    ("http://h:8787", "http://h:8787/v1/"),
    ("http://h:8787/", "http://h:8787/v1/"),
    ("https://h/ams/v1", "https://h/ams/v1/"),
])
def test_the_base_url_is_the_api_root(given: str, root: str) -> None:
    assert api_url(given) == root


async def test_options_go_on_the_wire(client: Either, gateway: Gateway) -> None:
    gateway.written("1:5", status="pending")
    await client.call("set", "agents/a1/plan", [1], ttl=30, if_version=4, idempotency_key="c-1", wait=False)
    request = gateway.last
    assert request.url.path == "/v1/kv/agents/a1/plan"
    assert request.url.params["ttl"] == "30"
    assert (request.headers["If-Match"], request.headers["Idempotency-Key"]) == ('"4"', "c-1")
    assert request.headers["Prefer"] == "respond-async"


async def test_keys_are_quoted_but_keep_their_readable_characters(client: Either, gateway: Gateway) -> None:
    gateway.reply(200, 1)
    await client.call("get", "user@example.com:a=b+c/x")
    assert gateway.last.url.raw_path == b"/v1/kv/user@example.com:a=b+c/x"
    gateway.reply(200, 1)
    await client.call("get", "a b?c")
    assert gateway.last.url.raw_path == b"/v1/kv/a%20b%3Fc"


# ----------------------------------------------------------------------------------------- session consistency


async def test_reads_carry_the_newest_position_of_each_partition_written(client: Either, gateway: Gateway) -> None:
    gateway.reply(200, 1)
    await client.call("get", "k")
    assert "X-AMS-Min-Position" not in gateway.last.headers  # nothing written yet, nothing to wait for

    gateway.written("3:42", status="pending")
    await client.call("set", "k", 1, wait=False)
    assert "X-AMS-Min-Position" not in gateway.last.headers  # writes do not wait
    gateway.written("0:15")
    await client.call("set", "j", 2)
    gateway.written("3:40")  # an older offset of partition 3 never moves the session back
    await client.call("set", "i", 3)

    gateway.reply(200, 1)
    await client.call("get", "k")
    assert gateway.last.headers["X-AMS-Min-Position"] == "0:15,3:42"
    assert client.client.session_token == "0:15,3:42"


async def test_every_read_route_sends_the_token(client: Either, gateway: Gateway) -> None:
    client.client.observe("2:7")
    gateway.reply(200, 1, headers={"ETag": '"7"'})
    gateway.reply(200, {"items": [], "next_cursor": None})
    gateway.reply(200, {"stream": "s", "entries": [], "next": None})
    gateway.reply(200, [])
    gateway.reply(200, [])
    gateway.reply(200, {"key": "k", "order": "newest", "entries": []})
    await client.call("get_versioned", "k")
    await client.keys()
    await client.call("read_stream", "s")
    await client.call("query", [1.0])
    await client.call("search_text", "x")
    await client.call("history", "k")
    assert [r.headers.get("X-AMS-Min-Position") for r in gateway.requests] == ["2:7"] * 6


async def test_a_batch_adds_every_partition_it_wrote(client: Either, gateway: Gateway) -> None:
    gateway.reply(202, {"results": [{"key": "a", "op": "kv.put", "status": "pending", "position": "0:15"},
                                    {"key": "b", "op": "kv.put", "status": "pending", "position": "3:42"}],
                        "positions": "0:15,3:42"}, headers={"X-AMS-Position": "0:15,3:42"})
    result = await client.call("batch", [Put("a", 1), Put("b", 2)], wait=False)
    assert result.positions == "0:15,3:42" and result.ok
    assert client.client.session_token == "0:15,3:42"


async def test_a_token_from_another_process_is_adopted(client: Either, gateway: Gateway) -> None:
    client.client.observe("4:100")
    client.client.observe("4:90,1:3")
    gateway.reply(200, {"x": 1})
    await client.call("get", "k")
    assert gateway.last.headers["X-AMS-Min-Position"] == "1:3,4:100"
    with pytest.raises(ValueError, match="partition:offset"):
        client.client.observe("not a token")


async def test_session_false_tracks_nothing_but_sends_what_it_is_given(flavor: str, gateway: Gateway) -> None:
    memory = Either(make(flavor, gateway, session=False))
    gateway.written("3:42")
    await memory.call("set", "k", 1)
    gateway.reply(200, 1)
    await memory.call("get", "k")
    assert "X-AMS-Min-Position" not in gateway.last.headers
    assert memory.client.session_token is None
    memory.client.observe("3:42")
    gateway.reply(200, 1)
    await memory.call("get", "k")
    assert gateway.last.headers["X-AMS-Min-Position"] == "3:42"
    await close(memory.client)


async def test_a_rejected_or_timed_out_write_still_moves_the_session(client: Either, gateway: Gateway) -> None:
    gateway.reply(409, {"error": {"code": "conflict", "message": "the write was not applied: key is at version 9"}},
                  headers={"X-AMS-Position": "1:11"})
    with pytest.raises(Conflict, match="key is at version 9"):
        await client.call("set", "k", 1, if_version=3)
    gateway.reply(504, {"error": {"code": "projection_timeout", "message": "the write is in the log at 2:20"}},
                  headers={"X-AMS-Position": "2:20"})
    with pytest.raises(ConsistencyTimeout) as raised:
        await client.call("set", "k", 1)
    assert raised.value.position == "2:20"
    assert client.client.session_token == "1:11,2:20"


# ----------------------------------------------------------------------------------------- results and errors


async def test_get_versioned_then_a_conditional_write(client: Either, gateway: Gateway) -> None:
    gateway.reply(200, {"n": 1}, headers={"ETag": '"41"'})
    gateway.written("3:42")
    current = await client.call("get_versioned", "counter")
    await client.call("set", "counter", {"n": current.value["n"] + 1}, if_version=current.version)
    assert gateway.last.headers["If-Match"] == '"41"'


async def test_absent_keys_raise_or_give_the_default(client: Either, gateway: Gateway) -> None:
    not_found = {"error": {"code": "not_found", "message": "key 'ghost' does not exist"}}
    gateway.reply(404, not_found)
    with pytest.raises(KeyNotFound, match="key 'ghost' does not exist"):
        await client.call("get", "ghost")
    gateway.reply(404, not_found)
    assert await client.call("get", "ghost", None) is None
    gateway.reply(404, not_found)
    assert await client.call("get", "ghost", default=[]) == []


async def test_server_errors_surface_with_the_servers_message(client: Either, gateway: Gateway) -> None:
    gateway.reply(401, {"error": {"code": "unauthorized", "message": "invalid token: Signature has expired"}})
    with pytest.raises(Unauthorized) as raised:
        await client.call("get", "k")
    assert "Signature has expired" in str(raised.value)
    assert raised.value.status == 401


async def test_keys_walks_every_page(client: Either, gateway: Gateway) -> None:
    gateway.reply(200, {"items": [{"key": "n/1", "version": 1}, {"key": "n/2", "version": 5}], "next_cursor": "c1"})
    gateway.reply(200, {"items": [{"key": "n/3", "version": 2}, {"key": "n/4", "version": 7}], "next_cursor": "c2"})
    gateway.reply(200, {"items": [{"key": "n/5", "version": 3}], "next_cursor": None})
    found = await client.keys("n/", limit=2)
    assert [(item.key, item.version) for item in found] == [("n/1", 1), ("n/2", 5), ("n/3", 2), ("n/4", 7),
                                                             ("n/5", 3)]
    assert [dict(r.url.params) for r in gateway.requests] == [
        {"prefix": "n/", "limit": "2"},
        {"prefix": "n/", "limit": "2", "cursor": "c1"},
        {"prefix": "n/", "limit": "2", "cursor": "c2"},
    ]
    assert {r.url.path for r in gateway.requests} == {"/v1/kv"}


async def test_delete_patch_append_and_positions(client: Either, gateway: Gateway) -> None:
    gateway.written("0:1")
    gateway.written("0:2")
    gateway.reply(200, {"event_id": "e", "stream": "agent/steps", "position": "4:9", "status": "accepted"},
                  headers={"X-AMS-Position": "4:9"})
    gateway.reply(200, {"projections": {"redis": {"0": {"applied": 2, "lag": 0}}}, "log": {"0": 3}})
    await client.call("delete", "k", if_version=1)
    assert (gateway.last.method, gateway.last.content, gateway.last.headers["If-Match"]) == ("DELETE", b"", '"1"')
    await client.call("patch", "k", {"a": None})
    assert gateway.last.headers["Content-Type"] == "application/merge-patch+json"
    appended = await client.call("append", "agent/steps", {"tool": "search"})
    assert (appended.key, appended.position) == ("agent/steps", "4:9")
    assert gateway.last.url.path == "/v1/streams/agent/steps"
    assert (await client.call("positions"))["log"] == {"0": 3}
    assert "X-AMS-Min-Position" not in gateway.last.headers


async def test_no_answer_is_a_transport_error(client: Either, gateway: Gateway) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    def stall(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    gateway.replies += [refuse] * (1 + DEFAULT_RETRIES) + [stall]
    with pytest.raises(TransportError) as refused:
        await client.call("get", "k")
    assert (refused.value.status, refused.value.code) == (0, "transport")
    assert "connection refused" in str(refused.value)
    assert len(gateway.requests) == 1 + DEFAULT_RETRIES
    with pytest.raises(TransportError) as stalled:
        await client.call("set", "k", 1)
    assert stalled.value.code == "timeout"
    assert isinstance(stalled.value.__cause__, httpx.ReadTimeout)
    assert len(gateway.requests) == 2 + DEFAULT_RETRIES  # a timeout is not resent: the server may be at work


def _drop(error: type[httpx.TransportError]) -> Callable[[httpx.Request], httpx.Response]:
    def fail(request: httpx.Request) -> httpx.Response:
        raise error("the connection failed before an answer", request=request)

    return fail


@pytest.mark.parametrize("error", [httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.ConnectError])
async def test_a_write_without_an_answer_is_resent_with_the_same_idempotency_key(
        client: Either, gateway: Gateway, error: type[httpx.TransportError]) -> None:
    gateway.replies += [_drop(error), _drop(error)]
    gateway.written("2:8", key="plan")
    written = await client.call("set", "plan", {"step": 1})
    assert (written.status, written.position) == ("accepted", "2:8")
    keys = [request.headers["Idempotency-Key"] for request in gateway.requests]
    assert len(keys) == 3 and len(set(keys)) == 1
    assert [request.content for request in gateway.requests] == [b'{"step":1}'] * 3


async def test_the_callers_idempotency_key_is_the_one_resent(client: Either, gateway: Gateway) -> None:
    gateway.replies.append(_drop(httpx.RemoteProtocolError))
    gateway.written("0:1", key="k")
    await client.call("delete", "k", idempotency_key="mine")
    assert [request.headers["Idempotency-Key"] for request in gateway.requests] == ["mine", "mine"]


async def test_each_write_has_an_idempotency_key_of_its_own(client: Either, gateway: Gateway) -> None:
    gateway.written("0:1")
    gateway.written("0:2")
    await client.call("set", "k", 1)
    await client.call("set", "k", 1)
    assert len({request.headers["Idempotency-Key"] for request in gateway.requests}) == 2


async def test_retries_are_bounded_by_the_clients_setting(flavor: str, gateway: Gateway) -> None:
    memory = make(flavor, gateway, retries=0)
    gateway.replies.append(_drop(httpx.RemoteProtocolError))
    with pytest.raises(TransportError):
        await Either(memory).call("get", "k")
    assert len(gateway.requests) == 1
    await close(memory)
    with pytest.raises(ValueError):
        make(flavor, gateway, retries=-1)


# ----------------------------------------------------------------------------------------- lifecycle


def test_the_sync_client_is_a_context_manager_with_a_timeout(gateway: Gateway) -> None:
    with MemoryClient(BASE, TOKEN, transport=httpx.MockTransport(gateway), timeout=2.5) as memory:
        assert memory._http.timeout.read == 2.5
    assert memory._http.is_closed


async def test_the_async_client_is_an_async_context_manager_with_a_timeout(gateway: Gateway) -> None:
    async with AsyncMemoryClient(BASE, TOKEN, transport=httpx.MockTransport(gateway), timeout=2.5) as memory:
        gateway.reply(200, "v")
        assert await memory.get("k") == "v"
        assert memory._http.timeout.connect == 2.5
    assert memory._http.is_closed


def test_a_client_without_a_token_sends_no_authorization(gateway: Gateway) -> None:
    gateway.reply(200, 1)
    with MemoryClient(BASE, transport=httpx.MockTransport(gateway), headers={"X-Trace": "t1"}) as memory:
        memory.get("k")
    assert "Authorization" not in gateway.last.headers
    assert gateway.last.headers["X-Trace"] == "t1"
