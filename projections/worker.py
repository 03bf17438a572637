"""`ams project NAME`: one projection as a Faust worker.

Each projection is its own Faust app and consumer group, so projections advance, fail and scale
independently. On every partition assignment the worker seeks to the sink's own checkpoint + 1.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import faust
from faust.types import TP
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ams.namespaces import Namespace, live
from ams.settings import Settings
from projections import metrics
from projections.dead_letters import DeadLetters
from projections.faust_app import ProjectionApp
from projections.log_reader import PartitionReader
from projections.projector import LogRecord, Projector, RawRecord, Reseek
from projections.sandbox_follower import SandboxFollower
from projections.sink import ProjectionSink

log = logging.getLogger("ams.projector")

BATCH_MAX = 1000
BATCH_WITHIN_SECONDS = 0.005
# How often the worker checks that its store still holds what it applied (Redis may lose its data).
RECOVERY_CHECK_SECONDS = 1.0
# A partition idle this long has its checkpoint moved over a trailing transaction marker (Projector.settle).
SETTLE_IDLE_SECONDS = 2.0


def _redis_sink(settings: Settings, namespace: Namespace) -> ProjectionSink:
    from projections.postgres_snapshot import PostgresSnapshots
    from projections.redis_layout import RedisLayout
    from projections.redis_recovery import RecoveringRedisSink

    snapshots = PostgresSnapshots(settings.postgres_dsn, namespace.postgres_schema)
    return RecoveringRedisSink(settings.redis_url, RedisLayout(namespace.redis_prefix), settings.partitions, snapshots,
                               wait_replicas=settings.redis_wait_replicas,
                               wait_timeout_ms=settings.redis_wait_timeout_ms)


def _postgres_sink(settings: Settings, namespace: Namespace) -> ProjectionSink:
    from projections.postgres import PostgresSink

    # Sandboxes borrow the process's one pool: a pool each made a few dozen sandboxes exhaust PostgreSQL.
    home = None if namespace.is_live else settings.postgres_schema
    return PostgresSink(settings.postgres_dsn, namespace.postgres_schema, settings.partitions, home=home)


def _embedder_sink(settings: Settings, namespace: Namespace) -> ProjectionSink:
    from projections.embedder import EmbedderSink

    return EmbedderSink(settings, namespace)


def _milvus_sink(settings: Settings, namespace: Namespace) -> ProjectionSink:
    from projections.milvus_sink import MilvusSink

    return MilvusSink(settings)


# Each projection's sink, made for a namespace (the live one, or a sandbox's).
SINKS: dict[str, Callable[[Settings, Namespace], ProjectionSink]] = {
    "redis": _redis_sink, "postgres": _postgres_sink, "embedder": _embedder_sink, "milvus": _milvus_sink,
}
# The projections that also project sandboxes. A sandbox's embedder emits into the sandbox's own embeddings
# stream, which each gateway's FAISS view of the sandbox reads; Milvus holds live vectors only (docs/VECTORS.md).
SANDBOXED = ("redis", "postgres", "embedder")


def _source(sink: ProjectionSink, settings: Settings) -> tuple[str, Callable[[LogRecord], Any] | None]:
    """The topic a sink reads, and the decoder of its records (None: the event envelope)."""
    if sink.source == "embeddings":
        from projections.embeddings import decode_op

        return settings.embeddings_topic, lambda record: decode_op(record.value)
    return settings.events_topic, None


def web_port(settings: Settings, name: str) -> int:
    return settings.projector_metrics_port + list(SINKS).index(name)


def build_app(name: str, settings: Settings) -> ProjectionApp:
    make_sink = SINKS[name]
    sink = make_sink(settings, live(settings))
    source_topic, decoder = _source(sink, settings)
    projector = Projector(sink, DeadLetters(settings.kafka_bootstrap, settings.dlq_topic, source_topic),
                          settings.default_tenant, PartitionReader(settings.kafka_bootstrap, source_topic),
                          decoder=decoder, max_value_bytes=settings.max_value_bytes)
    datadir = settings.home / "faust" / f"ams-projection-{name}"  # under the project's data, not the cwd
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = ProjectionApp(
        f"ams-projection-{name}",
        datadir=str(datadir),
        broker=f"kafka://{settings.kafka_bootstrap}",
        key_serializer="raw",
        value_serializer="raw",
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        web_enabled=True,
        web_bind="127.0.0.1",
        web_port=web_port(settings, name),
        web_transport="tcp://",
        broker_commit_every=500,
        # A worker that dies hands its partitions over after 10 s of silence, not Faust's default 60 s.
        broker_session_timeout=10,
        # Static membership: a worker restarted under the same instance id takes its partitions back at once,
        # instead of waiting for the group to drop its dead predecessor (the session timeout).
        consumer_group_instance_id=f"{settings.projector_instance}-{name}",
        broker_heartbeat_interval=2,
        stream_buffer_maxsize=4 * BATCH_MAX,
    )
    topic = app.topic(source_topic, key_type=bytes, value_type=bytes, internal=False)
    state: dict[str, set[int]] = {"assigned": set()}

    async def seek(offsets: dict[int, int]) -> None:
        # seek_wait runs the seek on Faust's consumer thread, which owns aiokafka's fetcher; Consumer.seek
        # would change the fetcher's buffers from this thread, racing its fetches (a KeyError that crashed
        # the worker during a rebalance, found by the fault-injection suite).
        await app.consumer.seek_wait({TP(source_topic, partition): offset for partition, offset in offsets.items()})

    @app.on_partitions_assigned.connect  # type: ignore[misc, arg-type]
    async def on_assigned(sender: faust.App, assigned: set[TP], **_: object) -> None:
        ours = {tp.partition for tp in assigned if tp.topic == source_topic}
        state["assigned"] = ours
        await projector.load_checkpoints(ours)
        await projector.recover_incomplete(ours)
        await seek({partition: projector.resume_offset(partition) for partition in ours})
        log.info("%s projection: assigned partitions %s, resuming from %s", name, sorted(ours),
                 {partition: projector.resume_offset(partition) for partition in sorted(ours)})

    @app.agent(topic, concurrency=1)
    async def project(stream: faust.StreamT) -> None:
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_SECONDS):  # type: ignore[attr-defined]
            records = [
                RawRecord(
                    event.message.partition,
                    event.message.offset,
                    event.message.value,
                    list(event.message.headers or ()),
                    int((event.message.timestamp or 0) * 1000),
                    event.message.key,
                )
                for event in events
            ]
            try:
                await projector.handle(records)
            except Reseek as reseek:
                await seek(reseek.offsets)
            except Exception:
                log.exception("%s projection: failed to apply a batch; re-reading it from the checkpoint", name)
                await asyncio.sleep(1)
                await projector.load_checkpoints()
                await seek({p: projector.resume_offset(p) for p in {record.partition for record in records}})

    if name in SANDBOXED:
        @app.task
        async def follow_sandboxes() -> None:
            await SandboxFollower(settings, lambda namespace: make_sink(settings, namespace)).run()

    @app.timer(RECOVERY_CHECK_SECONDS)
    async def check_store() -> None:
        try:
            await projector.recover_incomplete(state["assigned"], unless_busy=True)
            positions = {partition: await app.consumer.position(TP(source_topic, partition))
                         for partition in sorted(state["assigned"])}
            await projector.settle({p: offset for p, offset in positions.items() if offset is not None},
                                   idle=SETTLE_IDLE_SECONDS)
        except Reseek as reseek:
            await seek(reseek.offsets)
        except Exception as error:  # noqa: BLE001 - the next check tries again; the worker must keep running
            log.error("%s projection: checking the store for lost data failed (%r); retrying in %.0fs",
                      name, error, RECOVERY_CHECK_SECONDS)

    def lags() -> dict[int, int]:
        result = {}
        for partition in sorted(state["assigned"]):
            highwater = app.consumer.highwater(TP(source_topic, partition)) or 0
            result[partition] = max(0, highwater - projector.resume_offset(partition))
            metrics.LAG.labels(name, partition).set(result[partition])
        return result

    @app.page("/metrics")
    async def metrics_page(web, request):  # type: ignore[no-untyped-def]
        lags()
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/healthz")
    async def healthz(web, request):  # type: ignore[no-untyped-def]
        return web.json({"status": "ok", "projection": name})

    @app.page("/readyz")
    async def readyz(web, request):  # type: ignore[no-untyped-def]
        body = {"projection": name, "assigned": sorted(state["assigned"]), "lag": lags()}
        return web.json(body, status=200 if state["assigned"] else 503)

    @app.page("/positions")
    async def positions(web, request):  # type: ignore[no-untyped-def]
        return web.json({"projection": name, "checkpoints": projector.checkpoints, "lag": lags()})

    return app


def run_projection(name: str, settings: Settings) -> None:
    app = build_app(name, settings)
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()
