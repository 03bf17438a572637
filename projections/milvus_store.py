"""The Milvus vector view: one collection per tenant, rows keyed by the record's key.

Tenant isolation is the server's: a search names only the caller's own collection. Each row holds the
key's version; a delete becomes a tombstone row (``deleted``) that keeps the version, so an older
operation that arrives late (a replay, a zombie worker) is recognised and ignored. Searches exclude
tombstones and expired rows in the server-side filter. The per-partition checkpoint and the embedder's
marks live in the collection ``ams_checkpoints`` beside them.

pymilvus is synchronous: callers run these methods in a worker thread.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import MilvusException

from commands.vectors import Metric

# Milvus Lite gives query iterators no server timestamp; each page then warns that the client's clock is
# used instead, which is harmless for reading an inventory.
logging.getLogger("pymilvus.client.iterator").setLevel(logging.ERROR)

CHECKPOINTS = "ams_checkpoints"
MILVUS_METRICS: dict[Metric, str] = {"cosine": "COSINE", "ip": "IP", "l2": "L2"}
MAX_KEY_BYTES = 2048
PAGE = 1000


def collection_name(tenant: str) -> str:
    """An injective name: '_' and '-' (the only non-alphanumerics of a tenant) become '_u' and '_h'."""
    return "ams_t_" + tenant.replace("_", "_u").replace("-", "_h")


class CollectionReleased(ConnectionError):
    """The server released a collection (it restarted): transient, the next attempt loads it again."""


@contextmanager
def _reloading(store: MilvusStore) -> Iterator[None]:
    try:
        yield
    except MilvusException as error:
        if "load()" not in str(error):
            raise
        store._loaded.clear()
        raise CollectionReleased(f"Milvus released a collection ({error}); it is loaded again on retry") from None


@dataclass(frozen=True, slots=True)
class Row:
    key: str
    version: int
    vector: np.ndarray | None  # None: a tombstone
    value: Any = None
    expires_at: int | None = None


# pymilvus pings every 10 s even on an idle connection; a gRPC server (Milvus Lite's among them) allows one
# ping per 5 minutes without data, then drops the connection with "too many pings". Ping only during calls,
# which still finds a restarted server's dead connection quickly.
GRPC_OPTIONS = {"grpc.keepalive_permit_without_calls": False}


class MilvusStore:
    def __init__(self, uri: str, ef_search: int = 128, hnsw_m: int = 32, ef_construction: int = 100) -> None:
        self.client = MilvusClient(uri=uri, timeout=30, grpc_options=GRPC_OPTIONS)
        self.ef_search, self.hnsw_m, self.ef_construction = ef_search, hnsw_m, ef_construction
        self._dims: dict[str, tuple[int, Metric]] = {}
        self._loaded: set[str] = set()

    def close(self) -> None:
        self.client.close()

    def _load(self, name: str) -> None:
        """A collection is searchable once loaded; after a server restart it is not, until loaded again."""
        if name not in self._loaded:
            self.client.load_collection(name)
            self._loaded.add(name)

    def tenant_shape(self, tenant: str) -> tuple[int, Metric] | None:
        """(dimension, metric) of the tenant's collection, or None when it has none; loads the collection."""
        name = collection_name(tenant)
        if tenant not in self._dims:
            if not self.client.has_collection(name):
                return None
            description = self.client.describe_collection(name)
            vector = next(field for field in description["fields"] if field["name"] == "vector")
            metric: Metric = next((metric for metric, milvus in MILVUS_METRICS.items()
                                   if milvus == description.get("properties", {}).get("ams.metric")), "cosine")
            self._dims[tenant] = (int(vector["params"]["dim"]), metric)
        self._load(name)
        return self._dims[tenant]

    def ensure_tenant(self, tenant: str, dim: int, metric: Metric) -> None:
        if self.tenant_shape(tenant) is not None:
            return
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=MAX_KEY_BYTES)
        schema.add_field("version", DataType.INT64)
        schema.add_field("deleted", DataType.BOOL)
        schema.add_field("expires_at", DataType.INT64)
        schema.add_field("value", DataType.JSON)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        index = self.client.prepare_index_params()
        index.add_index("vector", index_type="HNSW", metric_type=MILVUS_METRICS[metric],
                        params={"M": self.hnsw_m, "efConstruction": self.ef_construction})
        self.client.create_collection(collection_name(tenant), schema=schema, index_params=index,
                                      consistency_level="Strong", properties={"ams.metric": MILVUS_METRICS[metric]})
        self._loaded.add(collection_name(tenant))
        self._dims[tenant] = (dim, metric)

    def versions(self, tenant: str, keys: list[str]) -> dict[str, int]:
        """The stored version of each of ``keys`` (tombstones included)."""
        found: dict[str, int] = {}
        with _reloading(self):
            for start in range(0, len(keys), PAGE):
                rows = self.client.query(collection_name(tenant), ids=keys[start:start + PAGE],
                                         output_fields=["key", "version"])
                found.update({row["key"]: int(row["version"]) for row in rows})
        return found

    def upsert(self, tenant: str, rows: list[Row]) -> None:
        dim = self._dims[tenant][0]
        placeholder = np.zeros(dim, dtype=np.float32)
        placeholder[0] = 1.0
        data = [{"key": row.key, "version": row.version, "deleted": row.vector is None,
                 "expires_at": row.expires_at or 0, "value": row.value if isinstance(row.value, dict) else {},
                 "vector": (placeholder if row.vector is None else row.vector).tolist()} for row in rows]
        with _reloading(self):
            for start in range(0, len(data), PAGE):
                self.client.upsert(collection_name(tenant), data[start:start + PAGE])

    def search(self, tenant: str, vector: np.ndarray, k: int, expression: str, now: int) -> list[dict[str, Any]]:
        live = f"deleted == false and (expires_at == 0 or expires_at > {int(now)})"
        condition = f"{live} and ({expression})" if expression else live
        with _reloading(self):
            results = self.client.search(
                collection_name(tenant), data=[vector.tolist()], anns_field="vector", limit=k, filter=condition,
                output_fields=["key", "version", "value"], search_params={"params": {"ef": max(self.ef_search, k)}},
            )
        return [{"key": hit["entity"]["key"], "score": float(hit["distance"]), "version": hit["entity"]["version"],
                 "value": hit["entity"]["value"]} for hit in results[0]]

    def inventory(self, tenant: str, now: int) -> dict[str, int]:
        """The version of every key with a live vector."""
        if self.tenant_shape(tenant) is None:
            return {}
        iterator = self.client.query_iterator(
            collection_name(tenant), batch_size=PAGE, output_fields=["key", "version"],
            filter=f"deleted == false and (expires_at == 0 or expires_at > {int(now)})")
        found: dict[str, int] = {}
        try:
            with _reloading(self):
                while rows := iterator.next():
                    found.update({row["key"]: int(row["version"]) for row in rows})
        finally:
            iterator.close()
        return found

    def tenants(self) -> list[str]:
        names = [name for name in self.client.list_collections() if name.startswith("ams_t_")]
        return [re.sub(r"_([uh])", lambda code: "_" if code.group(1) == "u" else "-", name.removeprefix("ams_t_"))
                for name in names]

    def _ensure_checkpoints(self) -> None:
        if CHECKPOINTS in self._loaded:
            return
        if self.client.has_collection(CHECKPOINTS):
            self._load(CHECKPOINTS)
            return
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("partition", DataType.INT64, is_primary=True)
        schema.add_field("offset", DataType.INT64)
        schema.add_field("mark", DataType.INT64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)  # Milvus wants one; unused
        index = self.client.prepare_index_params()
        index.add_index("vector", index_type="FLAT", metric_type="L2")
        self.client.create_collection(CHECKPOINTS, schema=schema, index_params=index, consistency_level="Strong")
        self._loaded.add(CHECKPOINTS)

    def checkpoints(self) -> dict[int, tuple[int, int]]:
        """partition -> (last applied offset of memory.embeddings, embedder mark of memory.events)."""
        self._ensure_checkpoints()
        with _reloading(self):
            rows = self.client.query(CHECKPOINTS, filter="partition >= 0",
                                     output_fields=["partition", "offset", "mark"])
        return {int(row["partition"]): (int(row["offset"]), int(row["mark"])) for row in rows}

    def write_checkpoint(self, partition: int, offset: int, mark: int) -> None:
        self._ensure_checkpoints()
        with _reloading(self):
            self.client.upsert(CHECKPOINTS, [{"partition": partition, "offset": offset, "mark": mark,
                                              "vector": [0.0, 0.0]}])
