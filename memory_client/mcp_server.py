"""AMS as a Model Context Protocol server (the official ``mcp`` SDK): ``ams mcp``.

One tenant's memory, the tenant of the token it is given (``--token`` or ``AMS_TOKEN``), over the HTTP API
(``--url`` or ``AMS_URL``). Tools: ``remember`` (put, with TTL and condition), ``recall`` (get), ``search``
(by text or vector, with a filter), ``forget`` (delete), ``list`` (keys by prefix), ``history`` (a key's
versions), ``append`` and ``read_stream`` (an agent's stream of observations). A tool that AMS refuses
answers an MCP tool error carrying AMS's own code and message.

Runs over stdio (the default, for agents and IDEs that launch it) or streamable HTTP on loopback
(``--transport http``, at ``/mcp``).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, ParamSpec, TypeVar

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from memory_client import calls
from memory_client.client import AsyncMemoryClient
from memory_client.errors import AMSError, KeyNotFound

P = ParamSpec("P")
R = TypeVar("R")

Key = Annotated[str, Field(description="a key: 1 to 512 characters of A-Z a-z 0-9 _ - . : / @ = +, "
                                       "'/'-separated segments, e.g. 'user:42/preferences'")]
INSTRUCTIONS = ("Long-term memory (AMS). Values are any JSON, under keys such as 'user:42/preferences'. "
                "remember writes, recall reads, list finds keys by prefix, search finds values by meaning "
                "(text, or a vector) with optional field filters, history shows a key's past versions, "
                "forget deletes; append and read_stream keep an agent's ordered log of observations. Every "
                "write is durable in an event log before it is acknowledged.")


def _amss_message(tool: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """AMS's refusals reach the MCP client as tool errors with the server's code and message."""
    @functools.wraps(tool)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await tool(*args, **kwargs)
        except AMSError as error:
            raise ToolError(str(error)) from error
    return call


def build_server(client: AsyncMemoryClient) -> MCPServer:
    server: MCPServer = MCPServer("ams", instructions=INSTRUCTIONS)

    @server.tool(description="Store a JSON value under a key (replacing what was there). Optionally it expires "
                             "after ttl_seconds, or is written only if the key is still at if_version.")
    @_amss_message
    async def remember(key: Key, value: Annotated[Any, Field(description="any JSON value")],
                       ttl_seconds: Annotated[float | None, Field(description="seconds until it expires", gt=0)]
                       = None,
                       if_version: Annotated[int | None, Field(description="write only if the key's version is "
                                                                           "this (from recall)")] = None,
                       ) -> dict[str, Any]:
        written = await client.set(key, value, ttl=ttl_seconds, if_version=if_version)
        return {"key": written.key, "status": written.status, "version": written.version,
                "position": written.position}

    @server.tool(description="Read the value stored under a key, with its version; found is false when the "
                             "key does not exist, was forgotten or expired.")
    @_amss_message
    async def recall(key: Key) -> dict[str, Any]:
        try:
            found = await client.get_versioned(key)
        except KeyNotFound as missing:
            if missing.code != calls.NO_ROUTE:
                return {"key": key, "found": False}
            raise
        return {"key": key, "found": True, "value": found.value, "version": found.version}

    @server.tool(description="Find the k stored values nearest in meaning to a text (needs the server's text "
                             "embedder) or to an embedding vector; filter keeps values whose fields match, e.g. "
                             '{"kind": "fact", "score": {"gte": 0.5}}.')
    @_amss_message
    async def search(text: Annotated[str | None, Field(description="what to look for, in words")] = None,
                     embedding: Annotated[list[float] | None, Field(description="a query vector")] = None,
                     k: Annotated[int, Field(description="how many results", ge=1, le=1000)] = 5,
                     filter: Annotated[dict[str, Any] | None, Field(description="conditions on value fields")]
                     = None) -> dict[str, Any]:
        if (text is None) == (embedding is None):
            raise ToolError("give exactly one of text or embedding")
        if embedding is not None:
            hits = await client.query(embedding, k, filter=filter)
        else:
            hits = await client.search_text(text or "", k, filter=filter)
        return {"hits": hits}

    @server.tool(description="Delete a key (its history stays readable).")
    @_amss_message
    async def forget(key: Key) -> dict[str, Any]:
        deleted = await client.delete(key)
        return {"key": deleted.key, "status": deleted.status, "position": deleted.position}

    @server.tool(name="list", description="List keys that start with a prefix, in key order, a page at a time "
                                          "(pass next_cursor back as cursor for the next page).")
    @_amss_message
    async def list_keys(prefix: Annotated[str, Field(description="a key prefix; '' for every key")] = "",
                        limit: Annotated[int, Field(description="page size", ge=1, le=1000)] = 100,
                        cursor: Annotated[str | None, Field(description="next_cursor of the previous page")] = None,
                        ) -> dict[str, Any]:
        page = await client.execute(calls.list_keys(prefix, limit=limit, cursor=cursor))
        return {"items": [{"key": item.key, "version": item.version} for item in page.items],
                "next_cursor": page.next_cursor}

    @server.tool(description="A key's past events, newest first: each write or delete with its outcome and "
                             "the value after it.")
    @_amss_message
    async def history(key: Key, limit: Annotated[int, Field(description="how many events", ge=1, le=1000)] = 20
                      ) -> dict[str, Any]:
        return {"events": await client.history(key, limit=limit)}

    @server.tool(description="Append an observation (any JSON) to an agent's stream: an append-only log, read "
                             "back in order with read_stream.")
    @_amss_message
    async def append(stream: Annotated[str, Field(description="the stream's name (the key grammar), e.g. "
                                                              "'agent:7/observations'")],
                     observation: Annotated[Any, Field(description="any JSON value")]) -> dict[str, Any]:
        appended = await client.append(stream, observation)
        return {"stream": appended.key, "status": appended.status, "position": appended.position}

    @server.tool(description="Read a stream's observations in order, a page at a time; pass next back as after "
                             "to read on (null: nothing more yet).")
    @_amss_message
    async def read_stream(stream: Annotated[str, Field(description="the stream's name")],
                          after: Annotated[str | None, Field(description="next of the previous page")] = None,
                          limit: Annotated[int, Field(description="page size", ge=1, le=1000)] = 100,
                          ) -> dict[str, Any]:
        page = await client.read_stream(stream, after=after, limit=limit)
        return {"items": page.items, "next": page.next}

    return server


def run(base_url: str, token: str, transport: str = "stdio", host: str = "127.0.0.1", port: int = 8788) -> None:
    """Serve until stopped (stdin closed, or a signal)."""
    server = build_server(AsyncMemoryClient(base_url, token))
    if transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host=host, port=port)
