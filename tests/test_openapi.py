"""The OpenAPI description names exactly the routes and methods the gateway serves."""

from __future__ import annotations

import re

import httpx
import pytest
from starlette.routing import Route

from ams.settings import Settings
from queries.gateway import create_app
from queries.openapi import DOCUMENT


def served(settings: Settings) -> set[tuple[str, str]]:
    pairs = set()
    for route in create_app(settings).routes:
        assert isinstance(route, Route)
        path = re.sub(r"\{(\w+):path\}", r"{\1}", route.path)
        pairs |= {(path, method.lower()) for method in route.methods or () if method != "HEAD"}
    return pairs


def described() -> set[tuple[str, str]]:
    return {(path, method) for path, operations in DOCUMENT["paths"].items() for method in operations}


def test_every_route_is_described_and_nothing_else(settings: Settings) -> None:
    assert served(settings) == described()


def test_every_authenticated_operation_documents_the_json_error_shape() -> None:
    for path, operations in DOCUMENT["paths"].items():
        for method, operation in operations.items():
            if not path.startswith("/v1"):
                continue
            assert operation["security"][0]["bearer"], (method, path)
            for status in ("400", "401", "403", "404"):
                schema = operation["responses"][status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, status)


@pytest.mark.stack
async def test_the_gateway_serves_it(settings: Settings) -> None:
    async with httpx.AsyncClient(base_url=settings.gateway_url) as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert response.json()["openapi"] == "3.0.3"
    assert set(response.json()["paths"]) == set(DOCUMENT["paths"])
