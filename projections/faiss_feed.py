"""Keeps the gateway's FAISS view up to date from ``memory.embeddings``.

Every gateway replica needs every tenant's vectors, so this is a plain consumer with all partitions
assigned by hand (no consumer group): it restores the snapshot, seeks each partition to the snapshot's
checkpoint + 1, and applies what follows. It is the view's only writer; searches read between its
steps (all on the event loop), and it writes the snapshot itself, between batches, so a snapshot never
holds half a batch.

When `ams rebuild vectors` publishes a newer generation of the view (`projections.faiss_files`), the
feed loads it, brings it to exactly the records the serving view has applied, and only then swaps it in
(one assignment between two steps of the event loop): searches see the old view or the new one, whole,
never a half-built index and never an older state than they saw before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import Counter, Gauge

from ams import kafka_clients
from ams.settings import Settings
from ams.tasks import cancel_all
from commands.envelope import MalformedEvent
from projections.embeddings import MARK, decode_op
from projections.faiss_files import drop_older, generation_path, newest_generation
from projections.faiss_index import IndexParams
from projections.faiss_view import FaissView

log = logging.getLogger("ams.vectors")

POISON = Counter("ams_vector_view_poison_records", "memory.embeddings records the FAISS view could not parse")
SNAPSHOTS = Counter("ams_vector_view_snapshots", "FAISS view snapshots written")
# Gateway processes sharing a port report the largest value among the running ones (compose/gateways.py).
RESTORED = Gauge("ams_vector_view_restored_keys", "Keys the FAISS view restored from its snapshot at start",
                 multiprocess_mode="livemax")
LAG = Gauge("ams_vector_view_lag", "memory.embeddings records not yet applied by the FAISS view", ["partition"],
            multiprocess_mode="livemax")
FLUSH_CHUNK = 512
NEWER_GENERATION_CHECK_SECONDS = 1.0
# How long the broker may hold the view's fetch while memory.embeddings has nothing new. It answers as soon as
# a record is there, so this costs no latency; Kafka's default (0.5 s) made an idle gateway decode two empty
# fetch responses a second. (A seek while a fetch is in flight waits for it: after a restart or a generation
# swap, the view may start reading up to this much later.)
IDLE_FETCH_WAIT_MS = 5000


def index_params(settings: Settings) -> IndexParams:
    return IndexParams(settings.vector_exact_below, settings.vector_hnsw_m, settings.vector_ef_construction,
                       settings.vector_ef_search)


async def apply_batch(view: FaissView, batch: dict[TopicPartition, list[Any]]) -> None:
    """Apply records of ``memory.embeddings`` to ``view``: operations first, then (once they are searchable)
    the checkpoints and the embedder's marks."""
    touched: set[str] = set()
    checkpoints: dict[int, int] = {}
    marks: dict[int, int] = {}
    for tp, records in batch.items():
        for record in records:
            try:
                op = decode_op(record.value)
            except MalformedEvent as error:
                POISON.inc()
                log.error("%s:%d:%d is not an embedding operation (%s); skipped", tp.topic, tp.partition,
                          record.offset, error)
                continue
            if op.op == MARK:  # published after the batch is searchable (below)
                marks[op.partition] = max(op.through, marks.get(op.partition, -1))
                continue
            tenant = view.apply(op)
            if tenant is not None:
                touched.add(tenant)
        if records:
            checkpoints[tp.partition] = records[-1].offset
    for tenant in touched:
        index = view.tenants[tenant]
        while not index.flush(FLUSH_CHUNK):
            await asyncio.sleep(0)  # let searches in between big additions
        if index.needs_compaction():
            index.rebuild()
    view.checkpoints.update(checkpoints)
    for partition, through in marks.items():
        view.marks[partition] = max(through, view.marks.get(partition, -1))


class FaissFeed:
    def __init__(self, settings: Settings, topic: str | None = None) -> None:
        """The view of ``topic`` (default: the live embeddings stream, snapshotted at the live path). A
        sandbox's view reads its own stream and keeps no snapshot: it replays its (small) stream at start,
        and leaves no file behind when the sandbox is dropped."""
        self.settings = settings
        self.topic = topic or settings.embeddings_topic
        self.sandboxed = topic is not None
        self.view = FaissView(index_params(settings), 0 if self.sandboxed else newest_generation(settings))
        self._advanced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._dirty = False
        self._refused = -1  # a newer generation whose snapshot could not be read
        self._consumer: AIOKafkaConsumer | None = None

    @property
    def path(self) -> Path | None:
        """This view's snapshot: its own generation's file (a sandbox's view keeps none)."""
        return None if self.sandboxed else generation_path(self.settings, self.view.generation)

    async def start(self) -> None:
        if self.path is not None and self.path.exists():  # the newest generation's
            try:
                generation = self.view.generation
                self.view = await asyncio.to_thread(FaissView.load, self.path, index_params(self.settings))
                self.view.generation = generation  # the file's name says which generation it is
                RESTORED.set(sum(len(index.entries) for index in self.view.tenants.values()))
                log.info("FAISS view restored from %s at %s", self.path, self.view.checkpoints)
            except (OSError, ValueError, KeyError) as error:
                log.error("FAISS snapshot %s is unreadable (%r); rebuilding the view from %s", self.path, error,
                          self.topic)
        topic = self.topic
        partitions = await self._partitions(topic)
        self._consumer = AIOKafkaConsumer(**self.settings.kafka.client_options(), enable_auto_commit=False,
                                          isolation_level="read_committed", max_partition_fetch_bytes=8 << 20,
                                          fetch_max_wait_ms=IDLE_FETCH_WAIT_MS)
        await self._consumer.start()
        kafka_clients.fetch_when_drained(self._consumer)  # else a partition could wait out the 5 s long poll
        await self._rewind([TopicPartition(topic, partition) for partition in sorted(partitions)])
        self._task = asyncio.create_task(self._run())

    async def _partitions(self, topic: str) -> set[int]:
        # A producer's metadata lookup waits for the topic's partitions, which a consumer's does not.
        producer = AIOKafkaProducer(**self.settings.kafka.client_options())
        await producer.start()
        try:
            partitions = await producer.partitions_for(topic)
        finally:
            await kafka_clients.stop(producer)
        if not partitions:
            raise RuntimeError(f"topic {topic!r} does not exist; run `ams up` to create it")
        return set(partitions)

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_all([self._task])
        if self._dirty and self.path is not None:
            await self.snapshot()
        if self._consumer is not None:
            await kafka_clients.stop(self._consumer)

    async def snapshot(self) -> None:
        assert self.path is not None, "a sandbox's view keeps no snapshot"
        await asyncio.to_thread(self.view.save, self.path)
        self._dirty = False
        SNAPSHOTS.inc()

    async def _run(self) -> None:
        assert self._consumer is not None
        last_snapshot = last_check = time.monotonic()
        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=500, max_records=2000)
                if batch:
                    await self._apply(batch)
                if not self.sandboxed and time.monotonic() - last_check >= NEWER_GENERATION_CHECK_SECONDS:
                    last_check = time.monotonic()
                    await self._adopt_newer_generation()
                due = time.monotonic() - last_snapshot >= self.settings.vector_snapshot_seconds
                if self._dirty and self.path is not None and due:
                    await self.snapshot()
                    last_snapshot = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - keep the view alive through broker restarts
                log.warning("FAISS view: reading or applying %s failed (%r); re-reading from its checkpoint",
                            self.topic, error)
                await asyncio.sleep(1)
                await self._rewind()

    async def _rewind(self, partitions: list[TopicPartition] | None = None) -> None:
        """Assign ``partitions`` (default: those assigned) and seek each to checkpoint + 1, or to its beginning
        (re-applying is harmless: versions decide). The seeks follow the assignment at once, before the
        consumer's fetcher runs: had it sent a fetch from elsewhere meanwhile, the new positions would wait up
        to IDLE_FETCH_WAIT_MS for it."""
        assert self._consumer is not None
        chosen = partitions if partitions is not None else sorted(self._consumer.assignment())
        unknown = [tp for tp in chosen if self.view.checkpoints.get(tp.partition) is None]
        beginnings = await self._consumer.beginning_offsets(unknown) if unknown else {}
        if partitions is not None:
            self._consumer.assign(partitions)
        for tp in chosen:
            checkpoint = self.view.checkpoints.get(tp.partition)
            self._consumer.seek(tp, beginnings[tp] if checkpoint is None else checkpoint + 1)

    async def _apply(self, batch: dict[TopicPartition, list]) -> None:  # type: ignore[type-arg]
        await apply_batch(self.view, batch)
        self._dirty = True
        for tp in batch:
            highwater = self._consumer.highwater(tp) if self._consumer else None
            if highwater is not None and self.path is not None:  # the live view's lag (a sandbox's is no alert)
                LAG.labels(tp.partition).set(max(0, highwater - 1 - self.view.checkpoints.get(tp.partition, -1)))
        self._advanced.set()
        self._advanced = asyncio.Event()

    async def _adopt_newer_generation(self) -> None:
        """Swap in a generation a rebuild published, once it holds what the serving view holds."""
        newest = newest_generation(self.settings)
        if newest <= self.view.generation or newest == self._refused:
            return
        path = generation_path(self.settings, newest)
        try:
            view = await asyncio.to_thread(FaissView.load, path, index_params(self.settings))
        except (OSError, ValueError, KeyError) as error:
            self._refused = newest
            log.error("FAISS snapshot %s is unreadable (%r); still serving generation %d", path, error,
                      self.view.generation)
            return
        view.generation = newest
        await self._catch_up(view, self.view.checkpoints)
        self.view = view
        await self._rewind()
        await self.snapshot()
        drop_older(self.settings, newest)
        log.warning("FAISS view: serving generation %d, rebuilt from %s, at %s", newest,
                    self.settings.embeddings_topic, view.checkpoints)
        self._advanced.set()
        self._advanced = asyncio.Event()

    async def _catch_up(self, view: FaissView, through: dict[int, int]) -> None:
        """Apply to ``view`` the records it lacks up to ``through`` (inclusive, per partition)."""
        behind = {p: offset for p, offset in through.items() if view.checkpoints.get(p, -1) < offset}
        if not behind:
            return
        consumer = AIOKafkaConsumer(**self.settings.kafka.client_options(), enable_auto_commit=False,
                                    isolation_level="read_committed", max_partition_fetch_bytes=8 << 20)
        await consumer.start()
        try:
            topic = self.settings.embeddings_topic
            consumer.assign([TopicPartition(topic, p) for p in behind])
            for partition in behind:
                consumer.seek(TopicPartition(topic, partition), view.checkpoints.get(partition, -1) + 1)
            while any(view.checkpoints.get(p, -1) < offset for p, offset in behind.items()):
                batch = await consumer.getmany(timeout_ms=500, max_records=2000)
                await apply_batch(view, {tp: [r for r in records if r.offset <= behind[tp.partition]]
                                         for tp, records in batch.items()})
        finally:
            await kafka_clients.stop(consumer)

    def reached(self, positions: dict[int, int]) -> bool:
        """The embedder's marks applied here cover these ``memory.events`` positions."""
        return all(self.view.marks.get(partition, -1) >= offset for partition, offset in positions.items())

    async def wait_reached(self, positions: dict[int, int], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.reached(positions):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._advanced.wait(), remaining)
        return True
