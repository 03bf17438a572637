"""`ams reindex`: reconcile each vector view against the source of truth, and repair what differs.

For every tenant it compares the source's vector-bearing records (`projections.current_records`) with
each view's inventory (key -> version of every live vector) and counts what is **missing** (in the
source, not in the view), **stale** (the view holds an older version) and **orphaned** (in the view,
but the source, having applied that version, no longer has a vector for the key).

Repairs are re-emitted to ``memory.embeddings`` as ``repair`` operations rather than written into the
views: the topic is the only feed of every view (each gateway replica's FAISS view and Milvus), it keeps
each key's operations in order with the live stream, and a rebuilt view replays the repairs too. A
repair carries the source's version and applies when it is not older than the view's, so a key that
moved on meanwhile is left alone. A view ahead of the source (the source lags) is never "repaired"
backwards: orphans count only where the source has applied the view's version.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import httpx
import numpy as np
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ams import kafka_clients
from ams.auth import ADMIN, issue_dev_token
from ams.settings import Settings
from commands.envelope import now_ms
from commands.keys import kafka_key, partition_for
from commands.vectors import InvalidVector, extract_vector
from projections.current_records import CurrentRecord, CurrentRecords, RedisCurrentRecords
from projections.embedder import TenantDimensions, value_without_vector
from projections.embeddings import DELETE, UPSERT, EmbeddingOp, encode_op
from projections.milvus_store import MilvusStore
from projections.redis_layout import RedisLayout
from projections.text_embedder import TextEmbedderUnavailable, text_embedder

console = Console()
VIEWS = ("faiss", "milvus")


class ViewInventory(Protocol):
    name: str

    async def inventory(self, tenant: str) -> dict[str, int]: ...

    async def tenants(self) -> list[str]: ...


class FaissGatewayInventory:
    """The FAISS view of the gateway at ``settings.gateway_url``, read through its admin endpoint.

    The tenant of a request is its token's, so `ams reindex` signs a short-lived admin token per tenant
    with the configured development secret (HS256, as `ams token` does).
    """

    name = "faiss"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = httpx.AsyncClient(base_url=settings.gateway_url, timeout=60)

    async def inventory(self, tenant: str) -> dict[str, int]:
        token = issue_dev_token(self.settings, tenant, [ADMIN], subject="ams-reindex", ttl=300)
        response = await self.client.get("/v1/vector/inventory", headers={"Authorization": f"Bearer {token}"})
        if response.status_code != 200:
            raise SystemExit(f"the gateway at {self.settings.gateway_url} refused the FAISS inventory of tenant "
                             f"{tenant!r}: {response.status_code} {response.text[:300]}")
        return {key: int(version) for key, version in response.json()["keys"].items()}

    async def tenants(self) -> list[str]:
        return []  # the gateway lists no tenants; orphans of tenants the source lacks go unseen here

    async def close(self) -> None:
        await self.client.aclose()


class MilvusInventory:
    name = "milvus"

    def __init__(self, settings: Settings) -> None:
        self.store = MilvusStore(settings.milvus_endpoint)

    async def inventory(self, tenant: str) -> dict[str, int]:
        return await asyncio.to_thread(self.store.inventory, tenant, now_ms())

    async def tenants(self) -> list[str]:
        await asyncio.to_thread(self.store.follow_live)  # the live generation (a rebuild may have switched it)
        return await asyncio.to_thread(self.store.tenants)

    async def close(self) -> None:
        self.store.close()


@dataclass
class Counts:
    checked: int = 0
    missing: int = 0
    stale: int = 0
    orphaned: int = 0


@dataclass
class Report:
    views: dict[str, Counts] = field(default_factory=dict)
    repairs: int = 0


@dataclass
class Reconciler:
    settings: Settings
    source: CurrentRecords
    views: list[ViewInventory]
    dimensions: TenantDimensions
    producer: AIOKafkaProducer

    async def run(self, progress: Progress) -> Report:
        report = Report({view.name: Counts() for view in self.views})
        tenants = [tenant async for tenant in self.source.tenants()]
        for view in self.views:
            tenants += [tenant for tenant in await view.tenants() if tenant not in tenants]
        applied = await self.source.applied()
        task = progress.add_task("reconciling tenants", total=len(tenants))
        for tenant in tenants:
            report.repairs += await self._tenant(tenant, applied, report)
            progress.advance(task)
        return report

    async def _tenant(self, tenant: str, applied: dict[int, int], report: Report) -> int:
        truth = await self._vectors(tenant, [record async for record in self.source.records(tenant, now_ms())])
        upserts: set[str] = set()
        deletes: dict[str, int] = {}
        for view in self.views:
            counts, inventory = report.views[view.name], await view.inventory(tenant)
            counts.checked += len(inventory)
            for key, (record, _) in truth.items():
                if key not in inventory:
                    counts.missing += 1
                    upserts.add(key)
                elif inventory[key] < record.version:
                    counts.stale += 1
                    upserts.add(key)
            for key, version in inventory.items():
                home = partition_for(kafka_key(tenant, key), self.settings.partitions)
                if key not in truth and applied.get(home, -1) >= version:
                    counts.orphaned += 1
                    deletes[key] = max(version, deletes.get(key, -1))
        metric = self.dimensions.spec(tenant).metric
        ops = [EmbeddingOp(UPSERT, tenant, key, truth[key][0].version, truth[key][1], metric,
                           value_without_vector(truth[key][0].value, self.settings), truth[key][0].expires_at,
                           repair=True) for key in sorted(upserts)]
        ops += [EmbeddingOp(DELETE, tenant, key, version, repair=True) for key, version in sorted(deletes.items())]
        await self._emit(ops)
        return len(ops)

    async def _vectors(self, tenant: str, records: Iterable[CurrentRecord]) -> dict[str, tuple[CurrentRecord,
                                                                                              np.ndarray]]:
        """The records whose value the embedder would index, with their vectors."""
        found: dict[str, tuple[CurrentRecord, list[float] | str]] = {}
        for record in records:
            try:
                vector = extract_vector(record.value, self.settings)
            except InvalidVector:
                continue
            if vector is not None:
                found[record.key] = (record, vector)
        texts = {key: item[1] for key, item in found.items() if isinstance(item[1], str)}
        embedded: dict[str, np.ndarray] = {}
        if texts:
            try:
                embedder = text_embedder(self.settings)
            except TextEmbedderUnavailable:
                embedder = None
            if embedder is not None:
                embedded = dict(zip(texts, await asyncio.to_thread(embedder.encode, list(texts.values())),
                                    strict=True))
        dimension = await self.dimensions.dimension(tenant)
        result = {}
        for key, (record, item) in found.items():
            array = embedded.get(key) if isinstance(item, str) else np.asarray(item, dtype=np.float32)
            if array is not None and (dimension is None or len(array) == dimension):
                result[key] = (record, array)
        return result

    async def _emit(self, ops: list[EmbeddingOp]) -> None:
        futures = []
        for op in ops:
            record_key = kafka_key(op.tenant, op.key)
            futures.append(await self.producer.send(self.settings.embeddings_topic, encode_op(op), key=record_key,
                                                    partition=partition_for(record_key, self.settings.partitions)))
        await asyncio.gather(*futures)


def _table(report: Report) -> Table:
    table = Table("view", "vectors checked", "missing", "stale", "orphaned", title="ams reindex")
    for name, counts in report.views.items():
        table.add_row(name, str(counts.checked), str(counts.missing), str(counts.stale), str(counts.orphaned))
    table.caption = f"{report.repairs} repair operations emitted to the embeddings topic"
    return table


async def reindex(settings: Settings, views: Iterable[str] = VIEWS) -> Report:
    client = aioredis.from_url(settings.redis_url)
    inventories: list[FaissGatewayInventory | MilvusInventory] = [
        FaissGatewayInventory(settings) if name == "faiss" else MilvusInventory(settings) for name in views]
    producer = AIOKafkaProducer(**settings.kafka.client_options(), acks="all", enable_idempotence=True,
                                max_request_size=16 << 20)
    await producer.start()
    try:
        source = RedisCurrentRecords(client, RedisLayout(settings.redis_prefix), settings.partitions)
        reconciler = Reconciler(settings, source, list(inventories), TenantDimensions(client, settings), producer)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            report = await reconciler.run(progress)
    finally:
        await kafka_clients.stop(producer)
        for inventory in inventories:
            await inventory.close()
        await client.aclose()
    console.print(_table(report))
    return report


def run_reindex(settings: Settings, views: Iterable[str] = VIEWS, periodic: float | None = None) -> None:
    async def loop() -> None:
        while True:
            await reindex(settings, views)
            if periodic is None:
                return
            console.print(f"next reconciliation in {periodic:g}s (Ctrl-C stops)")
            await asyncio.sleep(periodic)

    asyncio.run(loop())
