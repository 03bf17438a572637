"""Stopping aiokafka clients without losing the caller's cancellation.

aiokafka's ``stop()`` (and the admin client's ``close()``) awaits its own background tasks under
``contextlib.suppress(CancelledError)``. A cancellation of the *caller* that arrives meanwhile is
swallowed there, and the caller carries on as if it had never been cancelled. That is how a sandbox's
projection, cancelled because the sandbox was dropped, went on reading the deleted topic for ever (a storm
of metadata requests that slowed the whole broker), while the worker waited for it to end.

Every client is stopped through `stop`: shielded, the stop runs to its end on its own, and a cancellation
of the caller is raised in the caller.
"""

from __future__ import annotations

import asyncio
from typing import TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

KafkaClient: TypeAlias = AIOKafkaConsumer | AIOKafkaProducer | AIOKafkaAdminClient


async def stop(client: KafkaClient) -> None:
    closing = client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop()
    await asyncio.shield(closing)
