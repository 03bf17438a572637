"""The FAISS vector view: every tenant's index, what of ``memory.embeddings`` it has applied, and its snapshot.

The snapshot is one ``.npz`` file holding every tenant's vectors, serialized FAISS index and entries
*and* the per-partition checkpoint they correspond to. It is written to a temporary file, fsynced and
renamed into place, so a reader finds either the previous snapshot or the new one, whole, and the
content always matches its checkpoint. On start the view loads it and resumes ``memory.embeddings`` at
checkpoint + 1; without it, the view replays the topic from the start (no embedding is recomputed).
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import orjson

from commands.vectors import Metric
from projections.embeddings import UPSERT, EmbeddingOp
from projections.faiss_index import Entry, IndexParams, TenantIndex

log = logging.getLogger("ams.vectors")

SNAPSHOT_FORMAT = 1


class FaissView:
    def __init__(self, params: IndexParams, generation: int = 0) -> None:
        self.params = params
        self.generation = generation  # which rebuild of the view this is (see projections/faiss_files.py)
        self.tenants: dict[str, TenantIndex] = {}
        self.checkpoints: dict[int, int] = {}  # memory.embeddings partition -> last applied offset
        self.marks: dict[int, int] = {}  # memory.events partition -> processed by the embedder through

    def apply(self, op: EmbeddingOp) -> str | None:
        """Apply an upsert or a delete; returns the tenant it changed, if any. (Marks are the feed's: it
        publishes them once their batch is searchable.)"""
        index = self.tenants.get(op.tenant)
        if index is None:
            if op.op != UPSERT or op.vector is None:
                return None  # a delete for a tenant this view has no vectors of
            index = self.tenants[op.tenant] = TenantIndex(len(op.vector), op.metric, self.params)
        if op.vector is not None and len(op.vector) != index.dim:
            log.error("tenant %s key %r version %d: a %d-dimensional vector does not fit the tenant's %d; skipped",
                      op.tenant, op.key, op.version, len(op.vector), index.dim)
            return None
        return op.tenant if index.apply(op) else None

    def save(self, path: Path) -> None:
        """Write the snapshot atomically. The caller guarantees nothing changes the view meanwhile."""
        arrays: dict[str, Any] = {}
        tenants = []
        for number, (name, index) in enumerate(self.tenants.items()):
            index.flush()
            arrays[f"t{number}_vectors"] = index.vectors[:index.count]
            arrays[f"t{number}_alive"] = index.alive[:index.count]
            arrays[f"t{number}_index"] = faiss.serialize_index(index.index)
            entries = {key: [entry.version, entry.row, entry.value, entry.expires_at]
                       for key, entry in index.entries.items()}
            tenants.append({"name": name, "dim": index.dim, "metric": index.metric, "hnsw": index.hnsw,
                            "row_keys": index.row_keys, "entries": entries})
        meta = {"format": SNAPSHOT_FORMAT, "generation": self.generation, "checkpoints": self.checkpoints,
                "marks": self.marks, "tenants": tenants}
        arrays["meta"] = np.frombuffer(orjson.dumps(meta, option=orjson.OPT_NON_STR_KEYS), dtype=np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(temporary, "wb") as file:
                np.savez(file, **arrays)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    @classmethod
    def load(cls, path: Path, params: IndexParams) -> FaissView:
        """The view saved at ``path``; raises ValueError (or OSError) when the file is not a snapshot."""
        view = cls(params)
        with np.load(path, allow_pickle=False) as archive:
            meta = orjson.loads(archive["meta"].tobytes())
            if meta.get("format") != SNAPSHOT_FORMAT:
                raise ValueError(f"snapshot format {meta.get('format')!r} is not {SNAPSHOT_FORMAT}")
            view.generation = int(meta.get("generation", 0))
            view.checkpoints = {int(p): int(o) for p, o in meta["checkpoints"].items()}
            view.marks = {int(p): int(o) for p, o in meta["marks"].items()}
            for number, tenant in enumerate(meta["tenants"]):
                metric: Metric = tenant["metric"]
                index = TenantIndex(int(tenant["dim"]), metric, params)
                vectors = archive[f"t{number}_vectors"]
                index.count = len(vectors)
                index.vectors = np.empty((max(1024, 2 * index.count), index.dim), dtype=np.float32)
                index.vectors[:index.count] = vectors
                index.alive = np.zeros(len(index.vectors), dtype=bool)
                index.alive[:index.count] = archive[f"t{number}_alive"]
                index.dead = index.count - int(index.alive.sum())
                index.index = faiss.deserialize_index(archive[f"t{number}_index"])
                index.hnsw = bool(tenant["hnsw"])
                if index.hnsw:
                    index.index.hnsw.efSearch = params.ef_search  # type: ignore[attr-defined]
                index._added = index.count
                index.row_keys = list(tenant["row_keys"])
                for key, (version, row, value, expires_at) in tenant["entries"].items():
                    index.entries[key] = Entry(version, row, value, expires_at)
                    if row is not None:
                        index.keywords.put(key, value)
                    if expires_at is not None and row is not None:
                        index.expiring.add(key)
                view.tenants[tenant["name"]] = index
        return view
