"""Projecting sandboxes: every registered sandbox's topic into the sandbox's own namespace.

Each projection worker runs one follower beside its live consumer. The follower reads the sandbox
registry; for each sandbox it feeds the sandbox's topic (every partition, assigned by hand, so no
consumer-group rebalance ever touches the live projection) through a projector made as the live one is
(`projections.projectors.projector_for`) and the same loop (`projections.feed.Feed`), into a sink of the
sandbox's namespace. When a sandbox is dropped, its state is dropped too. A sandbox whose topic is missing
is reported (a warning, and the gauge ``ams_projection_sandboxes_unserved``) and looked for again with a
growing pause, never read in a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from ams import kafka_clients
from ams.namespaces import Namespace
from ams.settings import Settings
from ams.tasks import cancel_all
from projections import metrics
from projections.faults import FaultHook, no_fault_hook
from projections.feed import Feed
from projections.projectors import projector_for, source_topic
from projections.sink import ProjectionSink
from replay.sandboxes import SandboxSpec, follow_registry

log = logging.getLogger("ams.projector")
MISSING_TOPIC_FIRST_PAUSE = 1.0
MISSING_TOPIC_MAX_PAUSE = 60.0


class SandboxFollower:
    def __init__(self, settings: Settings, make_sink: Callable[[Settings, Namespace], ProjectionSink],
                 fault_hook: FaultHook = no_fault_hook) -> None:
        """``fault_hook``: the worker's (`projections.faults`), given to each sandbox's projector."""
        self.settings, self.make_sink, self.fault_hook = settings, make_sink, fault_hook
        self.running: dict[bytes, asyncio.Task[None]] = {}

    async def run(self) -> None:
        """Follow the registry until cancelled; an error (the broker or a store away) restarts the following,
        instead of ending the task (which crashed the whole worker, live projection included)."""
        try:
            while True:
                try:
                    await self._follow()
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # noqa: BLE001 - the live projection must keep running
                    log.warning("lost the sandbox registry (%r); following it again in 1s", error)
                    await asyncio.sleep(1)
        finally:
            await cancel_all(self.running.values())  # their sinks close

    async def _follow(self) -> None:
        async with contextlib.aclosing(follow_registry(self.settings)) as registry:  # closed when cancelled
            async for key, spec in registry:
                task = self.running.pop(key, None)
                if task is not None:
                    await cancel_all([task])
                if spec is None:
                    await self._drop(key)
                else:
                    self.running[key] = asyncio.create_task(self._project(spec))

    async def _drop(self, key: bytes) -> None:
        """Remove the dropped sandbox's state, retrying while its store is unavailable."""
        owner, _, name = key.decode().partition("|")
        while True:
            sink = self.make_sink(self.settings, SandboxSpec(owner, name).namespace(self.settings))
            try:
                dropped = await sink.drop()
                log.info("sandbox %s/%s dropped: %d items of its %s state removed", owner, name, dropped, sink.name)
                return
            except sink.transient_errors as error:
                log.warning("sandbox %s/%s: removing its %s state failed (%r); retrying in 1s", owner, name,
                            sink.name, error)
            finally:
                await sink.close()
            await asyncio.sleep(1)

    async def _project(self, spec: SandboxSpec) -> None:
        namespace = spec.namespace(self.settings)
        sink = self.make_sink(self.settings, namespace)
        projector = projector_for(sink, self.settings, namespace, after_apply=self.fault_hook(namespace.label))
        consumer = AIOKafkaConsumer(**self.settings.kafka.client_options(), enable_auto_commit=False,
                                    isolation_level="read_committed", max_partition_fetch_bytes=16 << 20)
        topic = source_topic(sink, namespace)
        feed = Feed(projector, consumer, topic, group=False)
        await consumer.start()
        kafka_clients.fetch_when_drained(consumer)
        try:
            await _wait_for_topic(consumer, topic, namespace.label)
            consumer.assign([TopicPartition(topic, partition) for partition in range(self.settings.partitions)])
            await feed.begin(feed.partitions())  # a new sandbox: its partitions become complete here
            await feed.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: the %s projection stopped; it resumes when the worker restarts", namespace.label,
                          sink.name)
        finally:
            await kafka_clients.stop(consumer)
            await projector.dead_letters.close()
            await sink.close()


async def _wait_for_topic(consumer: AIOKafkaConsumer, topic: str, label: str) -> None:
    """Return once ``topic`` exists. A consumer assigned a missing topic's partitions asks the broker for its
    metadata in a tight loop (40% of a core per such sandbox); instead, the sandbox is reported unserved and
    the topic looked for again after a pause that doubles up to a minute."""
    pause, reported = MISSING_TOPIC_FIRST_PAUSE, False
    try:
        while topic not in await consumer.topics():
            if not reported:
                metrics.SANDBOXES_UNSERVED.inc()
                reported = True
            log.warning("%s cannot be projected: its topic %s does not exist; looking again in %.0fs", label, topic,
                        pause)
            await asyncio.sleep(pause)
            pause = min(2 * pause, MISSING_TOPIC_MAX_PAUSE)
    finally:
        if reported:
            metrics.SANDBOXES_UNSERVED.dec()
