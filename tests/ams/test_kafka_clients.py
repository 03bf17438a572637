"""A task cancelled while it stops an aiokafka client stays cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from ams import kafka_clients
from ams.kafka_clients import KafkaClient
from ams.settings import Settings
from replay.catch_up import started_consumer

pytestmark = pytest.mark.stack


async def cancelled_while_stopping(client: KafkaClient, stopping: Callable[[KafkaClient], Awaitable[None]]) -> bool:
    """Cancel a task just after it begins to stop ``client``: True if it ended cancelled, False if it carried on."""
    carried_on = False

    async def stop_then_carry_on() -> None:
        nonlocal carried_on
        await stopping(client)
        carried_on = True

    task = asyncio.create_task(stop_then_carry_on())
    await asyncio.sleep(0)  # the task is inside the stop now
    task.cancel()
    await asyncio.wait([task])
    await asyncio.sleep(0.5)  # the stop itself goes on to its end
    return task.cancelled() and not carried_on


async def test_aiokafka_itself_loses_the_cancellation_which_is_why_clients_are_stopped_through_kafka_clients(
    settings: Settings,
) -> None:
    assert not await cancelled_while_stopping(await started_consumer(settings), lambda client: client.stop())


@pytest.mark.parametrize("kind", ["consumer", "producer", "admin"])
async def test_a_task_cancelled_while_it_stops_a_client_ends_cancelled(settings: Settings, kind: str) -> None:
    client: KafkaClient
    if kind == "consumer":
        client = await started_consumer(settings)
    elif kind == "producer":
        client = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        await client.start()
    else:
        client = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await client.start()
    assert await cancelled_while_stopping(client, kafka_clients.stop)
