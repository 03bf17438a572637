"""`ams project embedder`: the stream processor from ``memory.events`` to ``memory.embeddings``.

It folds the log with `commands.fold` exactly like the hot projection (it keeps a `RedisSink` under its
own prefix), so it knows each key's current value: patches, lost conditional writes, TTLs and deletes
come out as every other projection sees them. The sink's effect callback gets each batch's effect: per
touched key, the key's final vector state (an upsert, or a delete if the key had a vector and no longer
has one) is emitted, then a ``mark`` with the batch's last offset, and only then does the sink commit its
records and checkpoint in one Redis script. A crash between the two re-emits the same operations with the
same (key, version): the views apply an operation only when its version is newer, so the repeat is
harmless (exactly-once effects).

A tenant's dimension is configured, or fixed by the first vector indexed for it (HSETNX: the first
writer wins, across workers and partitions). A vector of another dimension is not indexed (the command
side refuses such writes with 422; this catches the race of two first writes and producers that write
to the log directly).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import Counter
from redis.exceptions import RedisError

from ams import kafka_clients
from ams.namespaces import Namespace, live
from ams.settings import Settings
from commands.fold import Outcome, Record
from commands.keys import kafka_key, partition_for
from commands.vectors import (
    DimensionUnavailable,
    InvalidVector,
    VectorSpec,
    extract_vector,
    spec_for,
    tenant_specs,
    value_text,
)
from projections.embeddings import DELETE, MARK, UPSERT, EmbeddingOp, encode_op
from projections.redis_kv import Address, RedisSink
from projections.redis_layout import RedisLayout
from projections.sink import Positioned, ProjectionSink
from projections.text_embedder import TextEmbedder, TextEmbedderUnavailable, text_embedder

log = logging.getLogger("ams.embedder")

NOT_INDEXED = Counter("ams_embedder_vectors_not_indexed", "Vectors not indexed, by reason", ["reason"])


class TenantDimensions:
    """Each tenant's fixed dimension: configured, or recorded by the embedder for its first vector.

    The command side reads it (`commands.vectors.DimensionSource`); a fixed dimension never changes,
    so what has been found once is kept in memory.
    """

    def __init__(self, client: aioredis.Redis, settings: Settings, namespace: Namespace | None = None) -> None:
        self.client, self.settings = client, settings
        self.specs = tenant_specs(settings)
        self.key = f"{(namespace or live(settings)).embedder_prefix}:dims"
        self._known: dict[str, int] = {}
        self._lookups: dict[str, asyncio.Future[int | None]] = {}

    def spec(self, tenant: str) -> VectorSpec:
        return spec_for(self.settings, self.specs, tenant)

    async def dimension(self, tenant: str) -> int | None:
        configured = self.spec(tenant).dim
        if configured is not None:
            return configured
        if tenant in self._known:
            return self._known[tenant]
        # One lookup per tenant at a time, whatever the number of concurrent writes waiting for it.
        lookup = self._lookups.get(tenant)
        if lookup is None:
            lookup = self._lookups[tenant] = asyncio.ensure_future(self._lookup(tenant))
            lookup.add_done_callback(lambda _: self._lookups.pop(tenant, None))
        return await asyncio.shield(lookup)

    async def _lookup(self, tenant: str) -> int | None:
        try:
            raw = await self.client.hget(self.key, tenant)
        except RedisError as error:
            message = f"the tenant's vector dimension could not be read from Redis ({error})"
            raise DimensionUnavailable(message) from None
        if raw is not None:
            self._known[tenant] = int(raw)
        return self._known.get(tenant)

    async def fix(self, proposals: Mapping[str, int]) -> dict[str, int]:
        """The dimension of each tenant, fixing it to the proposed one where none is fixed yet."""
        result = {tenant: dim for tenant in proposals if (dim := await self.dimension(tenant)) is not None}
        unknown = [tenant for tenant in proposals if tenant not in result]
        if unknown:
            async with self.client.pipeline(transaction=False) as pipe:
                for tenant in unknown:
                    pipe.hsetnx(self.key, tenant, proposals[tenant])
                    pipe.hget(self.key, tenant)
                answers = await pipe.execute()
            for tenant, raw in zip(unknown, answers[1::2], strict=True):
                self._known[tenant] = result[tenant] = int(raw)
        return result


class EmbedderSink(ProjectionSink):
    """The records vectors are derived from, kept as the hot projection keeps them (a `RedisSink` in a Redis
    namespace of the embedder's own), with each batch's effect on them emitted as embedding operations before
    the batch commits (the sink's effect callback)."""

    name = "embedder"
    transient_errors = (*RedisSink.transient_errors, KafkaError)

    def __init__(self, settings: Settings, namespace: Namespace | None = None) -> None:
        """``namespace``: live memory (default), or a sandbox, whose embedder keeps its state under the
        sandbox's prefix and emits into the sandbox's own embeddings stream, never the live one."""
        self.namespace = namespace or live(settings)
        self.state = RedisSink(settings.redis_url, RedisLayout(self.namespace.embedder_prefix), settings.partitions,
                               effect=self._emit_effect)
        self.client, self.layout, self.partitions = self.state.client, self.state.layout, self.state.partitions
        self.settings = settings
        self.dimensions = TenantDimensions(self.client, settings, self.namespace)
        self._producer: AIOKafkaProducer | None = None
        self._text: TextEmbedder | None = None
        self._text_checked = False

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(**self.settings.kafka.client_options(), acks="all",
                                          enable_idempotence=True, max_request_size=16 << 20, linger_ms=2)
        await self._producer.start()

    async def close(self) -> None:
        if self._producer is not None:
            await kafka_clients.stop(self._producer)
        await self.state.close()

    async def drop(self) -> int:
        return await self.state.drop()

    async def checkpoints(self) -> dict[int, int]:
        return await self.state.checkpoints()

    async def apply(
        self, partition: int, events: Sequence[Positioned], through: int, expected: int
    ) -> list[Outcome | None]:
        return await self.state.apply(partition, events, through, expected)

    async def _emit_effect(
        self, partition: int, through: int, before: Mapping[Address, Record | None], after: Mapping[Address, Record]
    ) -> None:
        """Emit the batch's effect before it commits: harmless to repeat (the views keep the newest version),
        since a failed commit makes the batch run again."""
        ops = await self.operations(before, after)
        ops.append(EmbeddingOp(MARK, partition=partition, through=through))
        await self._emit(ops, partition)

    async def _emit(self, ops: list[EmbeddingOp], partition: int) -> None:
        if self._producer is None:
            await self.start()
        assert self._producer is not None
        topic = self.namespace.embeddings_topic
        futures = []
        for op in ops:
            if op.op == MARK:
                futures.append(await self._producer.send(topic, encode_op(op), partition=partition))
                continue
            record_key = kafka_key(op.tenant, op.key)
            futures.append(await self._producer.send(topic, encode_op(op), key=record_key,
                                                     partition=partition_for(record_key, self.partitions)))
        await asyncio.gather(*futures)

    async def operations(
        self, before: Mapping[Address, Record | None], after: Mapping[Address, Record]
    ) -> list[EmbeddingOp]:
        """Each touched key's final vector state, as upserts and deletes."""
        found: dict[Address, list[float] | str] = {}
        for address, record in after.items():
            if record.deleted:
                continue
            try:
                vector = extract_vector(record.value, self.settings)
            except InvalidVector as error:
                log.warning("tenant %s key %r version %d: not indexed: %s", address[1], address[2], record.version,
                            error)
                NOT_INDEXED.labels("invalid").inc()
                continue
            if vector is not None:
                found[address] = vector
        vectors = await self._vectors(found)
        ops = []
        for address, record in after.items():
            tenant, key = address[1], address[2]
            indexed = vectors.get(address)
            if indexed is not None:
                metric = self.dimensions.spec(tenant).metric
                ops.append(EmbeddingOp(UPSERT, tenant, key, record.version, indexed, metric,
                                       value_without_vector(record.value, self.settings), record.expires_at))
            elif self._had_vector(before.get(address)):
                ops.append(EmbeddingOp(DELETE, tenant, key, record.version))
        return ops

    def _had_vector(self, record: Record | None) -> bool:
        if record is None or record.deleted or not isinstance(record.value, dict):
            return False
        return self.settings.vector_field in record.value or value_text(record.value, self.settings) is not None

    async def _vectors(self, found: Mapping[Address, list[float] | str]) -> dict[Address, np.ndarray]:
        """Vectors for the found values (texts embedded in one batch), minus those of the wrong dimension."""
        vectors = {address: np.asarray(item, dtype=np.float32) for address, item in found.items()
                   if isinstance(item, list)}
        texts = {address: item for address, item in found.items() if isinstance(item, str)}
        embedder = self._text_embedder() if texts else None
        if embedder is not None:
            encoded = await asyncio.to_thread(embedder.encode, list(texts.values()))
            vectors.update(zip(texts, encoded, strict=True))
        elif texts:
            NOT_INDEXED.labels("no_text_embedder").inc(len(texts))
        proposals: dict[str, int] = {}
        for (_, tenant, _), vector in vectors.items():
            proposals.setdefault(tenant, len(vector))
        fixed = await self.dimensions.fix(proposals)
        result = {}
        for address, vector in vectors.items():
            if len(vector) == fixed[address[1]]:
                result[address] = vector
                continue
            log.warning("tenant %s key %r: a %d-dimensional vector is not indexed; the tenant's dimension is %d",
                        address[1], address[2], len(vector), fixed[address[1]])
            NOT_INDEXED.labels("wrong_dimension").inc()
        return result

    def _text_embedder(self) -> TextEmbedder | None:
        if not self._text_checked:
            self._text_checked = True
            try:
                self._text = text_embedder(self.settings)
            except TextEmbedderUnavailable as error:
                log.error("values with text fields %s are not indexed: %s", self.settings.vector_text_fields, error)
        return self._text


def value_without_vector(value: Any, settings: Settings) -> Any:
    if isinstance(value, dict) and settings.vector_field in value:
        return {name: item for name, item in value.items() if name != settings.vector_field}
    return value
