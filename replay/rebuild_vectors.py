"""`ams rebuild vectors`: both vector views rebuilt from offset 0 of ``memory.embeddings``, FAISS then Milvus.

What is rebuilt: the views, from ``memory.embeddings``, not the embeddings themselves. That topic is the
views' own log: kept forever, it holds every upsert, delete, mark and `ams reindex` repair, in order with
each other, so replaying it gives exactly the views the live workers built. Re-embedding from
``memory.events`` would mean rebuilding the embedder's state and appending every operation again to the
topic every live view reads, where the version check would discard them all as repeats; and it would
compute every text embedding again. A corrupted view is what a rebuild repairs; a wrong vector at the
source is what `ams reindex` finds and repairs.

FAISS (generation N+1 of ``<AMS_HOME>/vectors``, `projections.faiss_files`): the new view is built in
this process, saved now and then to ``faiss-view.rebuild.npz`` (so an interrupted rebuild resumes from
it), and published at the head by renaming it to ``faiss-view.g<N+1>.npz``. Each gateway loads it,
brings it to what its serving view holds and swaps it in (`projections.faiss_feed`); the older
generation's file is deleted.

Milvus (generation N+1 collections, `projections.milvus_store`): filled from offset 0 by the same
`Projector` and `MilvusSink` the live worker runs, to the head and then exactly to the live generation's
checkpoints; then the alias ``ams_live`` is pointed at it: one atomic step. The live worker's next batch
finds the new generation (it looks once per batch): level with it, it carries on; behind it (the worker
applied more before the switch), it catches the new generation up from the log first (`MilvusSink`).
Gateways follow within half a second; readers holding a position wait for the new generation to reach
it, as for any view. After a grace period the retired generation's collections are dropped.

Milvus Lite (the pure-Python engine, 3.x) supports aliases like a Milvus server (create_alias,
alter_alias, describe_alias; tests/replay/test_rebuild_vectors.py checks it), so the same switch works on
both. Interrupted anywhere, the live generation of each view is untouched: FAISS's rebuild file and
Milvus's new collections are read by nobody until the switch. FAISS goes first because it is the faster:
a run interrupted during the Milvus part, run again, rebuilds FAISS anew and resumes Milvus.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.progress import Progress

from ams import kafka_clients
from ams.namespaces import live
from ams.settings import Settings
from projections.faiss_feed import apply_batch, index_params
from projections.faiss_files import drop_older, generation_path, newest_generation, rebuild_path
from projections.faiss_view import FaissView
from projections.feed import read_before
from projections.milvus_sink import MilvusSink
from projections.milvus_store import MilvusStore
from projections.projector import Projector
from projections.projectors import projector_for
from projections.redis_layout import RedisLayout
from replay.catch_up import Builder, Tracker, progress_display, started_consumer
from replay.rebuild_state import RebuildState, recorded

PROJECTION = "vectors"
MILVUS_GRACE_SECONDS = 5.0  # > a gateway's follow interval (0.5 s) and a slow worker batch
ADOPTION_SECONDS = 30.0  # how long to wait for a gateway to take a published FAISS generation
SAVE_SECONDS = 10.0  # how often the FAISS view being built is saved, to resume from


async def rebuild_vectors(settings: Settings, *, restart: bool = False, quiet: bool = False,
                          progress: Progress | None = None) -> RebuildState:
    redis = aioredis.from_url(settings.redis_url)
    layout = RedisLayout(settings.redis_prefix)
    display = progress or progress_display(quiet=quiet)
    state = RebuildState(PROJECTION, generation=0)
    try:
        async with recorded(redis, layout, state):
            with display if progress is None else contextlib.nullcontext():  # `all` shows its own
                tracker = Tracker(state, redis, layout, display)
                await _rebuild_faiss(settings, tracker, restart)
                await _rebuild_milvus(settings, tracker, restart)
                tracker.describe(f"done: FAISS and Milvus generation {state.generation} are live")
        return state
    finally:
        await redis.aclose()


async def _rebuild_faiss(settings: Settings, tracker: Tracker, restart: bool) -> None:
    building = newest_generation(settings) + 1
    view = None if restart else await asyncio.to_thread(_resumable, settings, building)
    view = view or FaissView(index_params(settings), building)
    tracker.describe(f"building FAISS generation {building}")
    consumer = await started_consumer(settings)
    try:
        await _faiss_to_head(settings, consumer, view, tracker)
    finally:
        await kafka_clients.stop(consumer)
    partial, published = rebuild_path(settings), generation_path(settings, building)
    await asyncio.to_thread(view.save, partial)
    os.replace(partial, published)  # the switch: gateways take whole files only
    tracker.describe(f"FAISS generation {building} published; waiting for the gateway to take it")
    await _wait_for_adoption(published)
    await asyncio.sleep(1.0)  # a gateway drops older files itself; this covers one that is not running
    drop_older(settings, building)


def _resumable(settings: Settings, building: int) -> FaissView | None:
    """The view an interrupted rebuild of the same generation left, if any."""
    try:
        view = FaissView.load(rebuild_path(settings), index_params(settings))
    except (OSError, ValueError, KeyError):
        return None
    return view if view.generation == building else None


async def _faiss_to_head(settings: Settings, consumer: AIOKafkaConsumer, view: FaissView, tracker: Tracker) -> None:
    topic = settings.embeddings_topic
    partitions = [TopicPartition(topic, partition) for partition in range(settings.partitions)]
    consumer.assign(partitions)
    for tp in partitions:
        if tp.partition in view.checkpoints:
            consumer.seek(tp, view.checkpoints[tp.partition] + 1)
        else:
            await consumer.seek_to_beginning(tp)
    saved = time.monotonic()
    while True:  # to the head, then to the head it has by then, until there is nothing new
        heads = await consumer.end_offsets(partitions)
        if all([await consumer.position(tp) >= heads[tp] for tp in partitions]):
            return
        async for windows in read_before(consumer, heads):
            await apply_batch(view, windows)
            remaining = sum([heads[tp] - await consumer.position(tp) for tp in partitions])
            await tracker.count(sum(len(records) for records in windows.values()), remaining)
            if time.monotonic() - saved > SAVE_SECONDS:
                await asyncio.to_thread(view.save, rebuild_path(settings))
                saved = time.monotonic()


async def _wait_for_adoption(published: os.PathLike[str]) -> bool:
    """A gateway that takes a generation writes its own snapshot of it at once: the file is replaced."""
    first = os.stat(published).st_ino
    deadline = time.monotonic() + ADOPTION_SECONDS
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            if os.stat(published).st_ino != first:
                return True
        await asyncio.sleep(0.2)
    return False


def milvus_projector(settings: Settings, sink: MilvusSink) -> Projector:
    """The live Milvus worker's projector, over a sink that writes a generation being built."""
    return projector_for(sink, settings, live(settings), label="milvus rebuild")


async def _rebuild_milvus(settings: Settings, tracker: Tracker, restart: bool) -> None:
    admin = await asyncio.to_thread(MilvusStore, settings.milvus_endpoint)
    try:
        live = await asyncio.to_thread(admin.follow_live)
        building = live + 1
        tracker.state.generation = building
        for leftover in await asyncio.to_thread(admin.generations):
            if leftover not in (live, building) or (restart and leftover == building):
                await asyncio.to_thread(admin.drop_generation, leftover)
        sink = MilvusSink(settings, generation=building)
        projector = milvus_projector(settings, sink)
        topic = settings.embeddings_topic
        consumer = await started_consumer(settings)
        try:
            builder = Builder(projector, consumer, topic, settings.partitions, tracker)
            await builder.start()
            tracker.describe(f"building Milvus generation {building}")
            await builder.to_head()
            # Then exactly what the live worker has applied meanwhile: a bound, where waiting to be level
            # with a live worker that keeps applying new writes could go on for ever.
            live_checkpoints = await asyncio.to_thread(admin.checkpoints, range(settings.partitions))
            await builder.through({partition: offset for partition, (offset, _) in live_checkpoints.items()})
            await asyncio.to_thread(sink.store.switch_live)
            tracker.state.switched = list(range(settings.partitions))
        finally:
            await kafka_clients.stop(consumer)
            await projector.dead_letters.close()
            await sink.close()
        tracker.state.state = "dropping"
        tracker.describe(f"Milvus generation {building} is live; dropping generation {live}")
        await tracker.save()
        await asyncio.sleep(MILVUS_GRACE_SECONDS)
        await asyncio.to_thread(admin.drop_generation, live)
    finally:
        admin.close()
