"""`MemoryClient` (sync) and `AsyncMemoryClient` (async) over httpx.

Both are thin: every public method is one line that builds a :class:`~memory_client.calls.Call` and
hands it to the client's single ``execute``, which sends it (again, when the connection failed before an
answer: see :mod:`memory_client.calls`) and lets :func:`~memory_client.calls.finish` record consistency
tokens, raise typed errors and parse the answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx

from memory_client import calls
from memory_client.calls import DEFAULT_RETRIES, RAISE, Call
from memory_client.models import BatchResult, KeyInfo, Operation, StreamPage, Versioned, WriteResult
from memory_client.session import Session

T = TypeVar("T")

#: Above the gateway's own bounded waits (5 s by default), so a slow projection answers with the server's
#: clear 504 rather than a client-side timeout.
DEFAULT_TIMEOUT = 30.0


def api_url(base_url: str) -> str:
    """The API root: ``http://host:port/v1`` as given; a bare ``http://host:port`` gets ``/v1``."""
    parts = urlsplit(base_url)
    path = parts.path.rstrip("/") or "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path + "/", parts.query, parts.fragment))


def _headers(token: str | None, headers: Mapping[str, str] | None) -> dict[str, str]:
    merged = {"Accept": "application/json", **(headers or {})}
    if token:
        merged["Authorization"] = f"Bearer {token}"
    return merged


class _Base:
    """What both clients share: the session's consistency token, and how often an unanswered request is resent."""

    def __init__(self, session: bool, retries: int) -> None:
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, got {retries}")
        self._session = Session()
        self._tracking = session
        self._retries = retries

    @property
    def session_token(self) -> str | None:
        """The newest position per partition this client has seen (``"0:15,3:42"``), or None.

        Give it to another process's client (``observe``) so that it reads what this one wrote.
        """
        return self._session.token

    def observe(self, token: str) -> None:
        """Adopt a consistency token: later reads wait until the server has applied it.

        Works with ``session=False`` too: such a client only sends what it was explicitly given.
        """
        self._session.observe(token)

    @property
    def _recording(self) -> Session | None:
        return self._session if self._tracking else None


class MemoryClient(_Base):
    """The AMS client for agents (sync)::

        with MemoryClient("http://127.0.0.1:8787/v1", token) as memory:
            memory.set("session:1234", {"step": 3})
            memory.get("session:1234")          # {"step": 3}

    ``session=True`` (the default) gives read-your-writes: reads carry the newest positions of this
    client's writes. ``timeout`` is in seconds (or an ``httpx.Timeout``); ``transport`` replaces httpx's
    network transport (for tests). ``retries``: how many times a request that got no answer because the
    connection failed (the server closed a keep-alive connection, refused one) is sent again.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        session: bool = True,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        super().__init__(session, retries)
        self._http = httpx.Client(base_url=api_url(base_url), headers=_headers(token, headers), timeout=timeout,
                                  transport=transport)

    def execute(self, call: Call[T]) -> T:
        """Send a prepared call (`memory_client.calls`): what every method does, and what adapters build on."""
        headers = calls.request_headers(call, self._session)
        attempt = 0
        while True:
            try:
                response = self._http.request(call.method, call.path, params=call.params, headers=headers,
                                              content=call.content)
                return calls.finish(call, response, self._recording)
            except httpx.TransportError as error:
                if not calls.should_retry(error, attempt, self._retries):
                    raise calls.transport_error(call, error) from error
            time.sleep(calls.retry_delay(attempt))
            attempt += 1

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> MemoryClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    # key-value memory

    def set(self, key: str, value: Any, *, ttl: float | None = None, if_version: int | None = None,
            if_absent: bool = False, idempotency_key: str | None = None, wait: bool = True) -> WriteResult:
        """Store a JSON value; ``Conflict`` if a condition (``if_version``, ``if_absent``) lost."""
        return self.execute(calls.set_value(key, value, ttl=ttl, if_version=if_version, if_absent=if_absent,
                                             idempotency_key=idempotency_key, wait=wait))

    def get(self, key: str, default: Any = RAISE) -> Any:
        """The value exactly as written; ``KeyNotFound`` if absent, unless a ``default`` is given."""
        return self.execute(calls.get_value(key, default))

    def get_versioned(self, key: str) -> Versioned:
        """The value and its version, for a later ``if_version``."""
        return self.execute(calls.get_versioned(key))

    def delete(self, key: str, *, if_version: int | None = None, idempotency_key: str | None = None,
               wait: bool = True) -> WriteResult:
        return self.execute(calls.delete_value(key, if_version=if_version, idempotency_key=idempotency_key,
                                                wait=wait))

    def patch(self, key: str, patch: Mapping[str, Any], *, if_version: int | None = None, ttl: float | None = None,
              idempotency_key: str | None = None, wait: bool = True) -> WriteResult:
        """Merge an RFC 7396 patch into the value (``None`` removes a field)."""
        return self.execute(calls.patch_value(key, patch, if_version=if_version, ttl=ttl,
                                               idempotency_key=idempotency_key, wait=wait))

    def keys(self, prefix: str = "", *, limit: int = 100) -> Iterator[KeyInfo]:
        """Every live key under ``prefix`` in key order, fetched ``limit`` at a time."""
        cursor: str | None = None
        while True:
            page = self.execute(calls.list_keys(prefix, limit=limit, cursor=cursor))
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def batch(self, operations: Iterable[Operation | Mapping[str, Any]], *, idempotency_key: str | None = None,
              wait: bool = True) -> BatchResult:
        """Several ``Put``/``Delete``/``Patch`` operations appended atomically; outcomes per operation."""
        return self.execute(calls.batch(operations, idempotency_key=idempotency_key, wait=wait))

    # streams

    def append(self, stream: str, observation: Any, *, idempotency_key: str | None = None,
               wait: bool = True) -> WriteResult:
        return self.execute(calls.append(stream, observation, idempotency_key=idempotency_key, wait=wait))

    def read_stream(self, stream: str, *, after: Any = None, limit: int = 100) -> StreamPage:
        return self.execute(calls.read_stream(stream, after=after, limit=limit))

    # search, history, positions

    def query(self, embedding: Sequence[float], top_k: int = 5, *,
              filter: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """The ``top_k`` memories nearest to ``embedding``: ``[{key, score, value, version}]``."""
        return self.execute(calls.vector_search(embedding, top_k, filter=filter))

    def search_text(self, text: str, top_k: int = 5, *, mode: str | None = None,
                    filter: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        return self.execute(calls.text_search(text, top_k, mode=mode, filter=filter))

    def history(self, key: str, *, limit: int = 100, order: str = "newest") -> list[dict[str, Any]]:
        return self.execute(calls.history(key, limit=limit, order=order))

    def positions(self) -> dict[str, Any]:
        return self.execute(calls.positions())


class AsyncMemoryClient(_Base):
    """The AMS client for agents (asyncio); the same methods as :class:`MemoryClient`, awaited::

        async with AsyncMemoryClient("http://127.0.0.1:8787/v1", token) as memory:
            await memory.set("session:1234", {"step": 3})
            await memory.get("session:1234")    # {"step": 3}
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        session: bool = True,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        super().__init__(session, retries)
        self._http = httpx.AsyncClient(base_url=api_url(base_url), headers=_headers(token, headers),
                                       timeout=timeout, transport=transport)

    async def execute(self, call: Call[T]) -> T:
        """Send a prepared call (`memory_client.calls`): what every method does, and what adapters build on."""
        headers = calls.request_headers(call, self._session)
        attempt = 0
        while True:
            try:
                response = await self._http.request(call.method, call.path, params=call.params, headers=headers,
                                                    content=call.content)
                return calls.finish(call, response, self._recording)
            except httpx.TransportError as error:
                if not calls.should_retry(error, attempt, self._retries):
                    raise calls.transport_error(call, error) from error
            await asyncio.sleep(calls.retry_delay(attempt))
            attempt += 1

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncMemoryClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.aclose()

    # key-value memory

    async def set(self, key: str, value: Any, *, ttl: float | None = None, if_version: int | None = None,
                  if_absent: bool = False, idempotency_key: str | None = None, wait: bool = True) -> WriteResult:
        """Store a JSON value; ``Conflict`` if a condition (``if_version``, ``if_absent``) lost."""
        return await self.execute(calls.set_value(key, value, ttl=ttl, if_version=if_version, if_absent=if_absent,
                                                   idempotency_key=idempotency_key, wait=wait))

    async def get(self, key: str, default: Any = RAISE) -> Any:
        """The value exactly as written; ``KeyNotFound`` if absent, unless a ``default`` is given."""
        return await self.execute(calls.get_value(key, default))

    async def get_versioned(self, key: str) -> Versioned:
        return await self.execute(calls.get_versioned(key))

    async def delete(self, key: str, *, if_version: int | None = None, idempotency_key: str | None = None,
                     wait: bool = True) -> WriteResult:
        return await self.execute(calls.delete_value(key, if_version=if_version, idempotency_key=idempotency_key,
                                                      wait=wait))

    async def patch(self, key: str, patch: Mapping[str, Any], *, if_version: int | None = None,
                    ttl: float | None = None, idempotency_key: str | None = None, wait: bool = True) -> WriteResult:
        return await self.execute(calls.patch_value(key, patch, if_version=if_version, ttl=ttl,
                                                     idempotency_key=idempotency_key, wait=wait))

    async def keys(self, prefix: str = "", *, limit: int = 100) -> AsyncIterator[KeyInfo]:
        """Every live key under ``prefix`` in key order (``async for``), fetched ``limit`` at a time."""
        cursor: str | None = None
        while True:
            page = await self.execute(calls.list_keys(prefix, limit=limit, cursor=cursor))
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def batch(self, operations: Iterable[Operation | Mapping[str, Any]], *,
                    idempotency_key: str | None = None, wait: bool = True) -> BatchResult:
        return await self.execute(calls.batch(operations, idempotency_key=idempotency_key, wait=wait))

    # streams

    async def append(self, stream: str, observation: Any, *, idempotency_key: str | None = None,
                     wait: bool = True) -> WriteResult:
        return await self.execute(calls.append(stream, observation, idempotency_key=idempotency_key, wait=wait))

    async def read_stream(self, stream: str, *, after: Any = None, limit: int = 100) -> StreamPage:
        return await self.execute(calls.read_stream(stream, after=after, limit=limit))

    # search, history, positions

    async def query(self, embedding: Sequence[float], top_k: int = 5, *,
                    filter: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        return await self.execute(calls.vector_search(embedding, top_k, filter=filter))

    async def search_text(self, text: str, top_k: int = 5, *, mode: str | None = None,
                          filter: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        return await self.execute(calls.text_search(text, top_k, mode=mode, filter=filter))

    async def history(self, key: str, *, limit: int = 100, order: str = "newest") -> list[dict[str, Any]]:
        return await self.execute(calls.history(key, limit=limit, order=order))

    async def positions(self) -> dict[str, Any]:
        return await self.execute(calls.positions())


def paired_clients(base_url: str, token: str, *, timeout: float = DEFAULT_TIMEOUT
                   ) -> tuple[MemoryClient, AsyncMemoryClient]:
    """A sync and an async client with one session, for adapters that offer both (LangGraph's and LangChain's
    stores): whichever side wrote, either side's reads see it."""
    sync, asynchronous = MemoryClient(base_url, token, timeout=timeout), AsyncMemoryClient(base_url, token,
                                                                                          timeout=timeout)
    asynchronous._session = sync._session
    return sync, asynchronous
