"""What each projection is made of: its sink (for the live namespace or a sandbox's), the topic it reads, and
the projector that applies that topic to the sink. The one place a projection's parts are put together."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ams.namespaces import Namespace
from ams.settings import Settings
from projections.dead_letters import DeadLetters
from projections.log_reader import PartitionReader
from projections.projector import LogRecord, Projector
from projections.sink import ProjectionSink


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
# The projection a strong write waits for and a read reads; the others are background views, run at a lower
# CPU priority (`Settings.background_nice`) so that their work for one write does not delay the next.
HOT = "redis"


def source_topic(sink: ProjectionSink, namespace: Namespace) -> str:
    """The topic a sink reads: the namespace's events, or (vector views) its embeddings stream."""
    return namespace.embeddings_topic if sink.source == "embeddings" else namespace.topic


def projector_for(sink: ProjectionSink, settings: Settings, namespace: Namespace, *, label: str = "",
                  after_apply: Callable[[], None] | None = None) -> Projector:
    """The one way a projector is made, live, for a sandbox or for a rebuild (``label`` names it in logs and
    metrics): the same dead letters, decoding and value-size limit. ``after_apply``: the fault suite's hook
    (`projections.faults`), from the worker that makes the projector."""
    topic = source_topic(sink, namespace)
    decoder: Callable[[LogRecord], Any] | None = None
    if sink.source == "embeddings":
        from projections.embeddings import decode_op

        decoder = lambda record: decode_op(record.value)  # noqa: E731 - a one-line adapter
    label = label or (sink.name if namespace.is_live else f"{sink.name} {namespace.label}")
    # A sandbox's label names its owner; in metrics, only when the operator allows it (AMS_METRICS_TENANT_LABELS).
    metrics_label = label if namespace.is_live or settings.metrics_tenant_labels else \
        f"{sink.name} {namespace.metrics_label}"
    return Projector(sink, DeadLetters(settings.kafka, settings.dlq_topic, topic), settings.default_tenant,
                     PartitionReader(settings.kafka, topic), label=label, metrics_label=metrics_label,
                     decoder=decoder, max_value_bytes=settings.max_value_bytes, after_apply=after_apply)
