"""`ams mcp` driven by the official MCP SDK's client, over stdio and streamable HTTP, against the real stack."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from ams.settings import Settings
from tests.conftest import token_for

pytestmark = pytest.mark.stack

AMS = str(Path(sys.executable).with_name("ams"))
TOOLS = {"remember", "recall", "search", "forget", "list", "history", "append", "read_stream"}


def _environment(settings: Settings) -> dict[str, str]:
    token = token_for(settings, f"t{uuid.uuid4().hex[:12]}")
    return {**os.environ, "AMS_TOKEN": token, "AMS_URL": f"{settings.gateway_url}/v1"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def http_server(settings: Settings) -> Iterator[str]:
    port = _free_port()
    process = subprocess.Popen([AMS, "mcp", "--transport", "http", "--port", str(port)], env=_environment(settings),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/mcp"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(10)


@pytest.fixture(params=["stdio", "http"])
def server(request: pytest.FixtureRequest, settings: Settings) -> Any:
    """What the SDK's Client connects to. The test opens the Client itself: its task group must be entered
    and left in the same task, which an async fixture's setup and teardown are not."""
    if request.param == "stdio":
        return StdioServerParameters(command=AMS, args=["mcp"], env=_environment(settings))
    return request.getfixturevalue("http_server")


async def _call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    structured: dict[str, Any] = result.structured_content
    return structured


async def test_the_tools_are_listed_with_schemas_and_descriptions(server: Any) -> None:
    async with Client(server) as mcp_client:
        await _tools_are_described(mcp_client)


async def _tools_are_described(mcp_client: Client) -> None:
    tools = {tool.name: tool for tool in (await mcp_client.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.description and tool.input_schema["type"] == "object" and tool.output_schema is not None
    assert tools["remember"].input_schema["required"] == ["key", "value"]


async def test_remember_recall_list_history_search_and_forget(server: Any) -> None:
    async with Client(server) as mcp_client:
        await _round_trip(mcp_client)


async def _round_trip(mcp_client: Client) -> None:
    written = await _call(mcp_client, "remember", key="user:1/likes", value={"tea": True, "embedding": [1, 0, 0]})
    assert written["status"] == "accepted"
    assert await _call(mcp_client, "recall", key="user:1/likes") == {
        "key": "user:1/likes", "found": True, "value": {"tea": True, "embedding": [1, 0, 0]},
        "version": written["version"]}
    await _call(mcp_client, "remember", key="user:1/city", value="Porto", ttl_seconds=3600)
    listed = await _call(mcp_client, "list", prefix="user:1/")
    assert [item["key"] for item in listed["items"]] == ["user:1/city", "user:1/likes"]
    hits = (await _call(mcp_client, "search", embedding=[1, 0, 0], k=1))["hits"]
    assert [hit["key"] for hit in hits] == ["user:1/likes"]
    assert (await _call(mcp_client, "forget", key="user:1/likes"))["status"] == "accepted"
    assert await _call(mcp_client, "recall", key="user:1/likes") == {"key": "user:1/likes", "found": False}
    events = (await _call(mcp_client, "history", key="user:1/likes"))["events"]
    assert len(events) == 2
    for step in range(3):
        assert (await _call(mcp_client, "append", stream="agent:1/seen", observation={"step": step}))["position"]
    page = await _call(mcp_client, "read_stream", stream="agent:1/seen", limit=2)
    rest = await _call(mcp_client, "read_stream", stream="agent:1/seen", after=page["next"])
    assert [entry["data"]["step"] for entry in page["items"] + rest["items"]] == [0, 1, 2]


async def test_amss_refusals_arrive_as_tool_errors_with_its_message(server: Any) -> None:
    async with Client(server) as mcp_client:
        await _refusals(mcp_client)


async def _refusals(mcp_client: Client) -> None:
    refused = await mcp_client.call_tool("remember", {"key": "bad key", "value": 1})
    assert refused.is_error
    assert "invalid_name" in refused.content[0].text and "outside" in refused.content[0].text  # type: ignore[union-attr]
    conflict = await mcp_client.call_tool("remember", {"key": "k", "value": 1, "if_version": 999999})
    assert conflict.is_error and "409" in conflict.content[0].text  # type: ignore[union-attr]
    assert (await mcp_client.call_tool("search", {"k": 3})).is_error
