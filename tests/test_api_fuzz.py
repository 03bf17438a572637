"""A property-based fuzz of the HTTP API from its own OpenAPI description (schemathesis), against the live
gateway with a valid token of a throwaway tenant: valid and invalid parameters, headers and bodies on
every operation, and then on every operation any header AMS reads with any value a client can send
(numbers past Kafka's range, huge ones, anything printable, the Authorization header too). Whatever it
sends, the gateway answers no 5xx, and every 4xx is a JSON error with a code and a message. The writes it
makes are real (a fresh tenant's); sandboxes it creates are dropped at once.
"""

from __future__ import annotations

import json
import time
import uuid

import httpx
import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.schemas import BaseSchema

from ams.settings import Settings, get_settings
from queries.openapi import DOCUMENT
from tests.conftest import token_for

pytestmark = pytest.mark.stack

EXAMPLES_PER_OPERATION = 25
TENANT = f"fuzz{uuid.uuid4().hex[:10]}"


OPERATIONS = [(method.upper(), path) for path, operations in DOCUMENT["paths"].items() for method in operations]
# Negative cases need something to break: a parameter or a body.
CASES = [(method, path, mode) for method, path in OPERATIONS
         for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
         if mode == GenerationMode.POSITIVE or DOCUMENT["paths"][path][method.lower()].get("parameters")
         or "requestBody" in DOCUMENT["paths"][path][method.lower()]]


@pytest.fixture(scope="module")
def api_schema(settings: Settings) -> BaseSchema:
    return schemathesis.openapi.from_url(f"{settings.gateway_url}/openapi.json")


def _headers() -> dict[str, str]:
    token = token_for(get_settings(), TENANT, "memory:read", "memory:write", "memory:admin")
    return {"Authorization": f"Bearer {token}"}


def _check(case: Case, status: int, content_type: str, body: bytes) -> None:
    where = f"{case.method} {case.formatted_path} -> {status}: {body[:300]!r}\n{case.as_curl_command()}"
    assert status < 500, where
    if 400 <= status < 500:
        assert content_type.startswith("application/json"), where
        error = json.loads(body)["error"]
        assert isinstance(error["code"], str) and error["code"], where
        assert isinstance(error["message"], str) and error["message"], where


@pytest.mark.parametrize(("method", "path", "mode"), CASES,
                         ids=[f"{method} {path} {mode.value}" for method, path, mode in CASES])
def test_no_input_gets_a_5xx_and_every_4xx_is_a_json_error(api_schema: BaseSchema, settings: Settings, method: str,
                                                           path: str, mode: GenerationMode) -> None:
    operation = api_schema[path][method]

    @hypothesis.given(operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    def attempt(case: Case) -> None:
        send(case, settings)

    attempt()


# Every request header the gateway reads, and values of every kind a client could put there.
FUZZED_HEADERS = ["X-AMS-Min-Position", "Last-Event-ID", "X-AMS-Sandbox", "Idempotency-Key", "If-Match",
                  "If-None-Match", "Prefer", "Authorization", "Content-Type"]
_big_number = st.integers(min_value=0, max_value=10**40).map(str)
header_values = st.one_of(
    st.tuples(_big_number, _big_number).map(":".join),  # positions: "partition:offset", past int64 as well
    st.lists(st.tuples(_big_number, _big_number).map(":".join), min_size=1, max_size=5).map(",".join),
    _big_number,
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=200)
      .map(str.strip),
    st.sampled_from(["", "Bearer", "Bearer ", "bearer x.y.z", "-1:-1", "0:", ":0", "all", "..", "0x10:1"]),
)
HEADER_EXAMPLES = 25


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{method} {path}" for method, path in OPERATIONS])
def test_no_header_value_gets_a_5xx(api_schema: BaseSchema, settings: Settings, method: str, path: str) -> None:
    operation = api_schema[path][method]

    @hypothesis.given(operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
                      st.dictionaries(st.sampled_from(FUZZED_HEADERS), header_values, min_size=1, max_size=3))
    @hypothesis.settings(max_examples=HEADER_EXAMPLES, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    def attempt(case: Case, fuzzed: dict[str, str]) -> None:
        for name, value in fuzzed.items():
            case.headers[name] = value
        send(case, settings, keep_headers=frozenset(fuzzed))

    attempt()


def send(case: Case, settings: Settings, keep_headers: frozenset[str] = frozenset()) -> None:
    """``keep_headers``: the case's own values of these win over the valid ones (a fuzzed Authorization)."""
    headers = {name: value for name, value in _headers().items() if name not in keep_headers}
    if case.path == "/v1/watch":  # an endless event stream: check how it opens, then hang up
        kwargs = case.as_transport_kwargs(base_url=settings.gateway_url, headers=headers)
        with requests.request(**kwargs, stream=True, timeout=10) as response:
            body = b"" if response.status_code == 200 else response.content
            _check(case, response.status_code, response.headers.get("content-type", ""), body)
        return
    called = case.call(base_url=settings.gateway_url, headers=headers, timeout=30)
    _check(case, called.status_code, called.headers.get("content-type", [""])[0], called.content)
    if case.path == "/v1/sandboxes" and case.method == "POST" and called.status_code == 201:
        name = called.json()["name"]
        dropped = requests.delete(f"{settings.gateway_url}/v1/sandboxes/{name}", headers=headers, timeout=30)
        assert dropped.status_code == 200, dropped.text


async def test_a_position_past_the_end_of_the_log_is_a_400_at_once(api: httpx.AsyncClient) -> None:
    """Found by the fuzz: a read that waited for a position no event has yet answered 504 after 5 s."""
    far = "0:999999999"
    requests_ = [api.get("/v1/kv/k", headers={"X-AMS-Min-Position": far}),
                 api.get("/v1/kv", headers={"X-AMS-Min-Position": far}),
                 api.get("/v1/kv/k", params={"as_of": far}),
                 api.get("/v1/kv", params={"as_of": far}),
                 api.get("/v1/kv/k/history", headers={"X-AMS-Min-Position": far}),
                 api.get("/v1/streams/s", headers={"X-AMS-Min-Position": far}),
                 api.post("/v1/vector/search", json={"embedding": [1.0, 0.0]}, headers={"X-AMS-Min-Position": far})]
    for request in requests_:
        started = time.monotonic()
        response = await request
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "position_beyond_log"
        assert time.monotonic() - started < 2
