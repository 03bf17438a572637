"""Attacks on the backends through the real processes `ams up` started: someone who reaches the machine's ports
with no credentials, or with one component's, gets no further than that component may go.

Each component's rights are in `compose.security`; these tests try what each must not do.
"""

from __future__ import annotations

import stat
from dataclasses import replace

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    TopicAuthorizationFailedError,
)
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from ams import credentials, kafka_clients
from ams.settings import Settings

pytestmark = pytest.mark.stack

FAST_FAIL = {"request_timeout_ms": 5000, "retry_backoff_ms": 100}


def as_principal(settings: Settings, principal: str) -> Settings:
    """The settings of ``principal``, whose password `ams up` generated."""
    return replace(settings, principal=principal, kafka_username="", kafka_password="", kafka_security_protocol="",
                   redis_url="", postgres_dsn="")


def anonymous(settings: Settings) -> Settings:
    """Someone who reaches the ports and knows no password."""
    return replace(settings, kafka_password="", kafka_security_protocol="PLAINTEXT",
                   redis_url=f"redis://127.0.0.1:{settings.redis_port}/0",
                   postgres_dsn=f"postgresql://ams@127.0.0.1:{settings.postgres_port}/ams?sslmode=require")


def test_every_secret_is_readable_by_its_owner_only(settings: Settings) -> None:
    for principal in credentials.PRINCIPALS:
        mode = stat.S_IMODE((settings.secrets_dir / principal).stat().st_mode)
        assert mode == 0o600, (principal, oct(mode))
    assert stat.S_IMODE((settings.home / "kafka" / "server.properties").stat().st_mode) == 0o600


# Kafka ---------------------------------------------------------------------------------------------------


async def test_kafka_without_credentials_can_neither_produce_nor_read(settings: Settings) -> None:
    nobody = anonymous(settings)
    producer = AIOKafkaProducer(**nobody.kafka.client_options(), **FAST_FAIL)
    with pytest.raises(KafkaConnectionError):
        await producer.start()
    await kafka_clients.stop(producer)
    consumer = AIOKafkaConsumer(**nobody.kafka.client_options(), **FAST_FAIL)
    with pytest.raises(KafkaConnectionError):
        await consumer.start()
    await kafka_clients.stop(consumer)


async def test_kafka_with_a_wrong_password_is_refused(settings: Settings) -> None:
    forger = replace(settings, kafka_username=credentials.ADMIN, kafka_password="not-the-password")
    producer = AIOKafkaProducer(**forger.kafka.client_options(), **FAST_FAIL)
    with pytest.raises(KafkaError):
        await producer.start()
    await kafka_clients.stop(producer)


async def test_the_gateway_can_neither_delete_nor_create_a_log_topic(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(**as_principal(settings, credentials.GATEWAY).kafka.client_options())
    await admin.start()
    try:
        # aiokafka's admin client hands back each topic's error code rather than raising it.
        deleted = await admin.delete_topics([settings.events_topic])
        assert [code for _topic, code in deleted.topic_error_codes] == [TopicAuthorizationFailedError.errno]
        created = await admin.create_topics([NewTopic("memory.squatted", 1, 1)])
        assert [code for _topic, code, _message in created.topic_errors] == [TopicAuthorizationFailedError.errno]
    finally:
        await kafka_clients.stop(admin)
    assert settings.events_topic in await _topics(settings)


async def test_a_projector_cannot_append_to_the_log(settings: Settings) -> None:
    producer = AIOKafkaProducer(**as_principal(settings, credentials.projector("redis")).kafka.client_options(),
                                **FAST_FAIL)
    await producer.start()
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            await producer.send_and_wait(settings.events_topic, b"forged event")
    finally:
        await kafka_clients.stop(producer)


async def test_the_milvus_worker_cannot_read_another_workers_offsets(settings: Settings) -> None:
    """A worker's group is its own: another principal cannot join it (and so take its partitions)."""
    milvus = as_principal(settings, credentials.projector("milvus"))
    consumer = AIOKafkaConsumer(settings.events_topic, **milvus.kafka.client_options(), **FAST_FAIL,
                                group_id="ams-projection-redis", enable_auto_commit=False)
    with pytest.raises(GroupAuthorizationFailedError):
        await consumer.start()
        await consumer.committed(TopicPartition(settings.events_topic, 0))
    await kafka_clients.stop(consumer)


async def _topics(settings: Settings) -> set[str]:
    admin = AIOKafkaAdminClient(**settings.kafka.client_options())
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await kafka_clients.stop(admin)


# Redis ---------------------------------------------------------------------------------------------------


async def test_redis_without_credentials_is_refused(settings: Settings) -> None:
    client = aioredis.from_url(anonymous(settings).redis_url)
    try:
        with pytest.raises((AuthenticationError, ResponseError)):
            await client.get(f"{settings.redis_prefix}:anything")
    finally:
        await client.aclose()


async def test_the_gateway_reads_the_hot_projection_but_cannot_write_its_streams_or_idempotency(
        settings: Settings) -> None:
    client = aioredis.from_url(as_principal(settings, credentials.GATEWAY).redis_url)
    tag = f"{settings.redis_prefix}:g0:{{p0}}"
    try:
        await client.get(f"{tag}:kv:t:k")
        await client.hgetall(f"{tag}:stream:t:s")
        for key in (f"{tag}:stream:t:s", f"{tag}:cmd:t:k", f"{tag}:unfinished", f"{settings.redis_prefix}-embedder:x"):
            with pytest.raises(NoPermissionError):
                await client.set(key, "forged")
        with pytest.raises(NoPermissionError):
            await client.flushall()
    finally:
        await client.aclose()


@pytest.mark.parametrize(("principal", "other"), [("projector-postgres", "{p}:g0:{{p0}}:kv:t:k"),
                                                   ("projector-embedder", "{p}:g0:{{p0}}:kv:t:k"),
                                                   ("projector-redis", "{p}-embedder:g0:{{p0}}:kv:t:k")])
async def test_a_projector_cannot_read_another_projections_redis_state(settings: Settings, principal: str,
                                                                       other: str) -> None:
    client = aioredis.from_url(as_principal(settings, principal).redis_url)
    try:
        with pytest.raises(NoPermissionError):
            await client.get(other.format(p=settings.redis_prefix))
    finally:
        await client.aclose()


# PostgreSQL ----------------------------------------------------------------------------------------------


async def test_postgres_without_a_password_or_without_tls_is_refused(settings: Settings) -> None:
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):  # no password: no pg_hba entry fits
        await asyncpg.connect(anonymous(settings).postgres_dsn.replace("sslmode=require", "sslmode=disable"))
    with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)):
        await asyncpg.connect(anonymous(settings).postgres_dsn, password="not-the-password")
    plaintext = settings.postgres_dsn.replace("sslmode=require", "sslmode=disable")
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):  # the right password, but in the clear
        await asyncpg.connect(plaintext)


async def test_postgres_serves_tls_to_roles_that_are_not_superusers(settings: Settings) -> None:
    connection = await asyncpg.connect(as_principal(settings, credentials.GATEWAY).postgres_dsn)
    try:
        assert await connection.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert not await connection.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    finally:
        await connection.close()


async def test_the_gateway_selects_but_cannot_write_the_durable_projection(settings: Settings) -> None:
    connection = await asyncpg.connect(as_principal(settings, credentials.GATEWAY).postgres_dsn)
    schema = settings.postgres_schema
    try:
        await connection.fetch(f'SELECT * FROM "{schema}".checkpoints LIMIT 1')
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await connection.execute(f"UPDATE \"{schema}\".checkpoints SET log_offset = 0")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await connection.execute(f'DROP TABLE "{schema}".checkpoints')
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await connection.execute(f'CREATE TABLE "{schema}".planted (x int)')
    finally:
        await connection.close()


async def test_a_projector_without_postgres_state_cannot_connect(settings: Settings) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await asyncpg.connect(as_principal(settings, credentials.projector("embedder")).postgres_dsn)


async def test_the_hot_projection_reads_the_durable_one_but_cannot_write_it(settings: Settings) -> None:
    connection = await asyncpg.connect(as_principal(settings, credentials.projector("redis")).postgres_dsn)
    try:
        await connection.fetch(f'SELECT * FROM "{settings.postgres_schema}".checkpoints LIMIT 1')
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await connection.execute(f'DELETE FROM "{settings.postgres_schema}".checkpoints')
    finally:
        await connection.close()
