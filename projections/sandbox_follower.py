"""Projecting sandboxes: every registered sandbox's topic into the sandbox's own namespace.

Each projection worker runs one follower beside its live consumer. The follower reads the sandbox
registry; for each sandbox it runs a loop over the sandbox's topic (every partition, assigned by hand, so
no consumer-group rebalance ever touches the live projection) through the same `Projector` as live
events, into a sink of the sandbox's namespace. When a sandbox is dropped, its state is dropped too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from ams import kafka_clients
from ams.namespaces import Namespace
from ams.settings import Settings
from ams.tasks import cancel_all
from projections.dead_letters import DeadLetters
from projections.log_reader import PartitionReader
from projections.projector import Projector, Reseek
from projections.sink import ProjectionSink
from replay.sandboxes import SandboxSpec, follow_registry

log = logging.getLogger("ams.projector")
RECOVERY_CHECK_SECONDS = 1.0  # as the live worker: has the sandbox's store lost data?


class SandboxFollower:
    def __init__(self, settings: Settings, make_sink: Callable[[Namespace], ProjectionSink]) -> None:
        self.settings, self.make_sink = settings, make_sink
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
            sink = self.make_sink(SandboxSpec(owner, name).namespace(self.settings))
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
        sink = self.make_sink(namespace)
        dead_letters = DeadLetters(self.settings.kafka_bootstrap, self.settings.dlq_topic, namespace.topic)
        reader = PartitionReader(self.settings.kafka_bootstrap, namespace.topic)
        projector = Projector(sink, dead_letters, self.settings.default_tenant, reader,
                              label=f"{sink.name} {namespace.label}")
        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap, enable_auto_commit=False,
                                    isolation_level="read_committed")
        await consumer.start()
        try:
            partitions = [TopicPartition(namespace.topic, p) for p in range(self.settings.partitions)]
            consumer.assign(partitions)
            await projector.load_checkpoints()
            numbers = [tp.partition for tp in partitions]
            await projector.recover_incomplete(numbers)  # a new sandbox: its partitions become complete here
            for tp in partitions:
                consumer.seek(tp, projector.resume_offset(tp.partition))
            checked = time.monotonic()
            while True:
                if time.monotonic() - checked > RECOVERY_CHECK_SECONDS:
                    for partition in await projector.recover_incomplete(numbers, unless_busy=True):
                        consumer.seek(TopicPartition(namespace.topic, partition), projector.resume_offset(partition))
                    checked = time.monotonic()
                batch = await consumer.getmany(timeout_ms=500, max_records=2000)
                try:
                    await projector.handle_partitions({tp.partition: records for tp, records in batch.items()})
                except Reseek as reseek:
                    for partition, offset in reseek.offsets.items():
                        consumer.seek(TopicPartition(namespace.topic, partition), offset)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: the %s projection stopped; it resumes when the worker restarts", namespace.label,
                          sink.name)
        finally:
            await kafka_clients.stop(consumer)
            await dead_letters.close()
            await sink.close()
