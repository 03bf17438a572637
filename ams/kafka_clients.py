"""Two corrections to aiokafka's clients: stopping them without losing the caller's cancellation, and a
consumer that never leaves a partition out of its next fetch.

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


# Longer than any batch takes: a consumer's records are always handed over before this.
_DRAINED_FIRST_SECONDS = 3600.0


def fetch_when_drained(consumer: AIOKafkaConsumer) -> AIOKafkaConsumer:
    """Make a started consumer fetch again only once every record it fetched has been handed over.

    aiokafka fetches a broker's partitions in one request, but leaves out a partition whose fetched records
    have not been consumed within 100 ms (its prefetch backoff). When the caller is slower than that (a
    projection's batch, a busy machine), the request sent meanwhile long-polls the other partitions for up to
    ``fetch_max_wait_ms`` (500 ms), and a record written to the left-out partition waits for it: the strong
    writes' 0.5 s tail. With the backoff longer than any batch, the next request waits for the batch to be
    taken instead, and names every partition. aiokafka has no option for it (its version is pinned; a test
    checks the attribute is still there and what it does)."""
    consumer._fetcher._prefetch_backoff = _DRAINED_FIRST_SECONDS
    return consumer
