"""The test suite's services: real Kafka, Redis and PostgreSQL, never mocks.

- With ``AMS_KAFKA_BOOTSTRAP`` / ``AMS_REDIS_URL`` / ``AMS_POSTGRES_DSN`` set, those services are used.
- With ``AMS_TEST_STACK=containers`` (needs a Docker engine), testcontainers starts them.
- Otherwise the local stack is brought up (`ams up`), and what this run started is stopped at the end.
The projector and gateway always run as real processes, managed by the local launcher.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from ams.auth import issue_dev_token
from ams.settings import Settings, get_settings
from compose.local import LocalStack


def _start_containers() -> list[object]:
    """Kafka, Redis and PostgreSQL in containers; their addresses go into the AMS_* variables."""
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer
    from testcontainers.redis import RedisContainer

    kafka = KafkaContainer("apache/kafka:4.1.1").with_kraft().start()
    redis = RedisContainer("redis:7.2").start()
    postgres = PostgresContainer("postgres:16", username="ams", password="ams", dbname="ams").start()
    os.environ["AMS_KAFKA_BOOTSTRAP"] = kafka.get_bootstrap_server()
    os.environ["AMS_REDIS_URL"] = f"redis://{redis.get_container_host_ip()}:{redis.get_exposed_port(6379)}/0"
    os.environ["AMS_POSTGRES_DSN"] = postgres.get_connection_url(driver=None)
    return [kafka, redis, postgres]


@pytest.fixture(scope="session")
def settings() -> Settings:
    return get_settings()


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    containers = _start_containers() if os.environ.get("AMS_TEST_STACK") == "containers" else []
    get_settings.cache_clear()
    local = LocalStack(get_settings())
    started = local.up(quiet=True)
    yield local
    local.down(started)
    for container in containers:
        container.stop()  # type: ignore[attr-defined]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("stack"):
            item.fixturenames.insert(0, "stack")  # type: ignore[attr-defined]


@pytest.fixture
def tenant() -> str:
    """A fresh tenant per test: tests share the stack, never each other's data."""
    return f"t{uuid.uuid4().hex[:12]}"


def token_for(settings: Settings, tenant: str, *scopes: str) -> str:
    return issue_dev_token(settings, tenant, list(scopes or ("memory:read", "memory:write")))


@pytest.fixture
async def api(settings: Settings, tenant: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the gateway, authenticated as ``tenant`` with read and write scopes."""
    headers = {"Authorization": f"Bearer {token_for(settings, tenant)}"}
    async with httpx.AsyncClient(base_url=settings.gateway_url, headers=headers, timeout=30) as client:
        yield client
