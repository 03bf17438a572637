"""The Milvus vector view: one collection per tenant, rows keyed by the record's key.

Tenant isolation is the server's: a search names only the caller's own collection. Each row holds the
key's version; a delete becomes a tombstone row (``deleted``) that keeps the version, so an older
operation that arrives late (a replay, a zombie worker) is recognised and ignored. Searches exclude
tombstones and expired rows in the server-side filter. The per-partition checkpoint and the embedder's
marks live in the collection ``ams_checkpoints`` beside them.

Generations: `ams rebuild vectors` builds generation N+1 (``ams_g<N+1>_t_<tenant>`` and
``ams_g<N+1>_checkpoints``) beside the live one, then points the alias ``ams_live`` at the new checkpoint
collection: one atomic step that moves every reader and writer. Generation 0 keeps the original names and
is live while the alias does not exist. A store built without a generation follows the live one: callers
call `follow_live` where a switch may take effect (the projection worker before each batch, so that a
whole batch goes to one generation; the gateway before each search); it starts in the live one.

pymilvus is synchronous: callers run these methods in a worker thread.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator
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
LIVE_ALIAS = "ams_live"  # names the live generation's checkpoint collection
GENERATION_NAME = re.compile(r"ams_g(\d+)_(?:checkpoints|t_.+)")
MILVUS_METRICS: dict[Metric, str] = {"cosine": "COSINE", "ip": "IP", "l2": "L2"}
MAX_KEY_BYTES = 2048
PAGE = 1000


def tenant_prefix(generation: int = 0) -> str:
    return "ams_t_" if generation == 0 else f"ams_g{generation}_t_"


def collection_name(tenant: str, generation: int = 0) -> str:
    """An injective name: '_' and '-' (the only non-alphanumerics of a tenant) become '_u' and '_h'."""
    return tenant_prefix(generation) + tenant.replace("_", "_u").replace("-", "_h")


def checkpoints_name(generation: int = 0) -> str:
    return CHECKPOINTS if generation == 0 else f"ams_g{generation}_checkpoints"


def generation_of(collection: str) -> int | None:
    """The generation an AMS collection belongs to (None: not one of the view's collections)."""
    if collection == CHECKPOINTS or collection.startswith(tenant_prefix(0)):
        return 0
    found = GENERATION_NAME.fullmatch(collection)
    return int(found.group(1)) if found else None


class GenerationUnknown(ConnectionError):
    """The live generation could not be looked up (Milvus is unreachable or restarting): transient. Nothing an
    event holds can make this lookup fail, so it must never dead-letter the batch that needed it."""


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
    def __init__(self, uri: str, ef_search: int = 128, hnsw_m: int = 32, ef_construction: int = 100, *,
                 generation: int | None = None) -> None:
        """``generation``: a fixed one (a rebuild's), or None to follow the live one (`follow_live`)."""
        self.client = MilvusClient(uri=uri, timeout=30, grpc_options=GRPC_OPTIONS)
        self.ef_search, self.hnsw_m, self.ef_construction = ef_search, hnsw_m, ef_construction
        self.following = generation is None
        self._dims: dict[str, tuple[int, Metric]] = {}
        self._loaded: set[str] = set()
        self._creating = threading.Lock()
        self.generation = self.live_generation() if generation is None else generation
        self._followed = time.monotonic()

    def live_generation(self) -> int:
        try:
            if LIVE_ALIAS not in self.client.list_aliases().get("aliases", []):
                return 0
            return generation_of(self.client.describe_alias(LIVE_ALIAS)["collection_name"]) or 0
        except MilvusException as error:
            raise GenerationUnknown(f"Milvus could not say which generation of the view is live ({error}); "
                                    "retrying") from error

    def follow_live(self, max_age: float = 0.0) -> int:
        """Move to the live generation (looked up at most every ``max_age`` seconds); returns it."""
        if self.following and time.monotonic() - self._followed >= max_age:
            live = self.live_generation()
            self._followed = time.monotonic()
            if live != self.generation:
                self.generation = live
                self._dims.clear()
        return self.generation

    def switch_live(self) -> None:
        """Make this store's generation the live one: one atomic alias change for every reader and writer."""
        target = checkpoints_name(self.generation)
        if LIVE_ALIAS in self.client.list_aliases().get("aliases", []):
            self.client.alter_alias(target, LIVE_ALIAS)
        else:
            self.client.create_alias(target, LIVE_ALIAS)

    def generations(self) -> set[int]:
        """Every generation that has a collection."""
        found = {generation_of(name) for name in self.client.list_collections()}
        return {generation for generation in found if generation is not None}

    def drop_generation(self, generation: int) -> int:
        """Drop every collection of ``generation``; returns how many went."""
        prefix = tenant_prefix(generation)
        doomed = [name for name in self.client.list_collections()
                  if name.startswith(prefix) or name == checkpoints_name(generation)]
        for name in doomed:
            self.client.drop_collection(name)
            self._loaded.discard(name)
        return len(doomed)

    def collection(self, tenant: str) -> str:
        return collection_name(tenant, self.generation)

    def close(self) -> None:
        self.client.close()

    def _load(self, name: str) -> None:
        """A collection is searchable once loaded; after a server restart it is not, until loaded again."""
        if name not in self._loaded:
            self.client.load_collection(name)
            self._loaded.add(name)

    def tenant_shape(self, tenant: str) -> tuple[int, Metric] | None:
        """(dimension, metric) of the tenant's collection, or None when it has none; loads the collection."""
        name = self.collection(tenant)
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
        # Partitions are applied concurrently, each in a thread: two of them may meet a new tenant at once.
        with self._creating:
            if self.tenant_shape(tenant) is None:
                self._create_tenant(tenant, dim, metric)

    def _create_tenant(self, tenant: str, dim: int, metric: Metric) -> None:
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
        try:
            self.client.create_collection(self.collection(tenant), schema=schema, index_params=index,
                                          consistency_level="Strong",
                                          properties={"ams.metric": MILVUS_METRICS[metric]})
        except MilvusException:
            if self.tenant_shape(tenant) is None:
                raise
            return  # another process created it meanwhile: the first one's shape stands
        self._loaded.add(self.collection(tenant))
        self._dims[tenant] = (dim, metric)

    def versions(self, tenant: str, keys: list[str]) -> dict[str, int]:
        """The stored version of each of ``keys`` (tombstones included)."""
        found: dict[str, int] = {}
        with _reloading(self):
            for start in range(0, len(keys), PAGE):
                rows = self.client.query(self.collection(tenant), ids=keys[start:start + PAGE],
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
                self.client.upsert(self.collection(tenant), data[start:start + PAGE])

    def search(self, tenant: str, vector: np.ndarray, k: int, expression: str, now: int) -> list[dict[str, Any]]:
        live = f"deleted == false and (expires_at == 0 or expires_at > {int(now)})"
        condition = f"{live} and ({expression})" if expression else live
        with _reloading(self):
            results = self.client.search(
                self.collection(tenant), data=[vector.tolist()], anns_field="vector", limit=k, filter=condition,
                output_fields=["key", "version", "value"], search_params={"params": {"ef": max(self.ef_search, k)}},
            )
        return [{"key": hit["entity"]["key"], "score": float(hit["distance"]), "version": hit["entity"]["version"],
                 "value": hit["entity"]["value"]} for hit in results[0]]

    def inventory(self, tenant: str, now: int) -> dict[str, int]:
        """The version of every key with a live vector."""
        if self.tenant_shape(tenant) is None:
            return {}
        iterator = self.client.query_iterator(
            self.collection(tenant), batch_size=PAGE, output_fields=["key", "version"],
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
        prefix = tenant_prefix(self.generation)
        names = [name for name in self.client.list_collections() if name.startswith(prefix)]
        return [re.sub(r"_([uh])", lambda code: "_" if code.group(1) == "u" else "-", name.removeprefix(prefix))
                for name in names]

    def _ensure_checkpoints(self) -> str:
        name = checkpoints_name(self.generation)
        if name in self._loaded:
            return name
        if self.client.has_collection(name):
            self._load(name)
            return name
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("partition", DataType.INT64, is_primary=True)
        schema.add_field("offset", DataType.INT64)
        schema.add_field("mark", DataType.INT64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)  # Milvus wants one; unused
        index = self.client.prepare_index_params()
        index.add_index("vector", index_type="FLAT", metric_type="L2")
        self.client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")
        self._loaded.add(name)
        return name

    def checkpoints(self, partitions: Iterable[int]) -> dict[int, tuple[int, int]]:
        """partition -> (last applied offset of memory.embeddings, embedder mark of memory.events), of those
        of ``partitions`` the view has seen.

        Asked by primary key: every checkpoint write is an upsert, which leaves the old row behind as a
        deletion until compaction, and a range filter (``partition >= 0``) scans all of them. After a few
        thousand writes that scan cost Milvus Lite 33 ms of CPU per batch; the lookup by key costs 1.4 ms.
        """
        name = self._ensure_checkpoints()
        with _reloading(self):
            rows = self.client.query(name, filter=f"partition in {sorted(set(partitions))}",
                                     output_fields=["partition", "offset", "mark"])
        return {int(row["partition"]): (int(row["offset"]), int(row["mark"])) for row in rows}

    def write_checkpoint(self, partition: int, offset: int, mark: int) -> None:
        name = self._ensure_checkpoints()
        with _reloading(self):
            self.client.upsert(name, [{"partition": partition, "offset": offset, "mark": mark,
                                              "vector": [0.0, 0.0]}])
