"""A request that never got an answer because the connection failed is resent; a resent write applies once.

Against real HTTP peers on loopback (tests/memory_client/unreliable_http.py): a server that closes every
keep-alive connection as it is reused, and a proxy in front of the real gateway that loses an answer.
"""

from __future__ import annotations

import pytest

from ams.settings import Settings
from memory_client import AsyncMemoryClient, MemoryClient, TransportError
from memory_client.calls import DEFAULT_RETRIES
from tests.conftest import token_for
from tests.memory_client.test_clients import Either, close
from tests.memory_client.unreliable_http import AnswerDroppingProxy, ClosingServer


def make(flavor: str, url: str, token: str | None = None, retries: int = DEFAULT_RETRIES
         ) -> MemoryClient | AsyncMemoryClient:
    if flavor == "sync":
        return MemoryClient(f"{url}/v1", token, retries=retries)
    return AsyncMemoryClient(f"{url}/v1", token, retries=retries)


@pytest.fixture(params=["sync", "async"])
def flavor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_a_keep_alive_connection_closed_by_the_server_never_reaches_the_caller(flavor: str) -> None:
    with ClosingServer() as server:
        memory = make(flavor, server.url)
        answers = [await Either(memory).call("get", "k") for _ in range(20)]
        await close(memory)
    assert answers == [{"answered": n} for n in range(1, 21)]
    assert server.dropped == 19  # every reuse of a connection met a closed one, and was resent on a new one
    assert server.connections == 20


async def test_without_retries_the_closed_connection_is_a_transport_error(flavor: str) -> None:
    with ClosingServer() as server:
        memory = make(flavor, server.url, retries=0)
        assert await Either(memory).call("get", "k") == {"answered": 1}
        with pytest.raises(TransportError) as failed:
            await Either(memory).call("get", "k")
        await close(memory)
    assert failed.value.code == "transport"


@pytest.mark.stack
async def test_a_write_whose_answer_was_lost_is_resent_and_applied_once(
        flavor: str, settings: Settings, tenant: str) -> None:
    token = token_for(settings, tenant)
    with AnswerDroppingProxy(("127.0.0.1", settings.gateway_port)) as proxy:
        memory = make(flavor, proxy.url, token)
        written = await Either(memory).call("set", "plan", {"step": 1})
        versioned = await Either(memory).call("get_versioned", "plan")
        history = await Either(memory).call("history", "plan")
        await close(memory)
    assert proxy.dropped_first and proxy.connections == 2
    assert written.status == "duplicate"  # the first attempt was applied; its answer never came back
    assert versioned.version == written.version
    assert [entry["outcome"]["status"] for entry in history] == ["duplicate", "accepted"]
    assert history[0]["command_id"] == history[1]["command_id"]
    assert history[1]["outcome"]["version"] == written.version
