"""One tenant's FAISS index: exact (IndexFlat) while small, HNSW once it has grown, ids mapped to keys.

Rows are appended in order, so a row number is also the FAISS id. HNSW cannot remove vectors, so an
update or delete marks the old row dead; searches exclude dead and expired rows with an id selector,
and the index is rebuilt from its live rows once too many are dead. Every key keeps its last version,
also after a delete (a tombstone), so that an older operation arriving late is recognised and ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from commands.vectors import Metric
from projections.embeddings import UPSERT, EmbeddingOp
from projections.keyword_index import KeywordIndex

# Filtered searches that select at most this many rows are answered exactly, by brute force.
EXACT_SUBSET = 20_000
COMPACT_MIN_DEAD = 1_000
COMPACT_DEAD_FRACTION = 0.3


def _search_parameters(hnsw: bool, ef_search: int, bits: np.ndarray | None, size: int) -> Any:
    """FAISS search parameters: HNSW's beam width, and a selector of the allowed ids (``bits``, one per id)."""
    params: Any = faiss.SearchParametersHNSW() if hnsw else faiss.SearchParameters()  # type: ignore[attr-defined]
    if hnsw:
        params.efSearch = ef_search
    if bits is not None:
        params.sel = faiss.IDSelectorBitmap(size, faiss.swig_ptr(bits))
    return params


@dataclass(frozen=True, slots=True)
class IndexParams:
    exact_below: int = 20_000  # live vectors below which search is exact
    hnsw_m: int = 32
    ef_construction: int = 100
    ef_search: int = 128


@dataclass(slots=True)
class Entry:
    version: int
    row: int | None  # None: the key has no vector (deleted); the version is kept as a tombstone
    value: Any = None
    expires_at: int | None = None

    def live(self, now: int) -> bool:
        return self.row is not None and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True, slots=True)
class Hit:
    key: str
    score: float
    entry: Entry


class TenantIndex:
    def __init__(self, dim: int, metric: Metric, params: IndexParams) -> None:
        self.dim, self.metric, self.params = dim, metric, params
        self.vectors = np.empty((1024, dim), dtype=np.float32)
        self.alive = np.zeros(1024, dtype=bool)
        self.count = 0
        self.dead = 0  # rows no key points to any more
        self.entries: dict[str, Entry] = {}
        self.row_keys: list[str] = []
        self.expiring: set[str] = set()  # keys whose vector has an expiry
        self.keywords = KeywordIndex()  # the live keys' words, for keyword search
        self.hnsw = False
        self.index: faiss.Index = self._new_index(hnsw=False)
        self._added = 0  # rows already added to the FAISS index

    @property
    def live(self) -> int:
        return self.count - self.dead

    def _new_index(self, hnsw: bool) -> faiss.Index:
        faiss_metric = faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        if not hnsw:
            return faiss.IndexFlat(self.dim, faiss_metric)
        index = faiss.IndexHNSWFlat(self.dim, self.params.hnsw_m, faiss_metric)
        index.hnsw.efConstruction = self.params.ef_construction
        index.hnsw.efSearch = self.params.ef_search
        return index

    def prepare(self, vectors: np.ndarray) -> np.ndarray:
        """Vectors as the index holds them: float32, unit length for cosine."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        if self.metric == "cosine":
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.where(norms == 0, 1.0, norms)
        return vectors

    def apply(self, op: EmbeddingOp) -> bool:
        """Apply an upsert or delete if it is newer than what the key has; True if it changed anything."""
        entry = self.entries.get(op.key)
        if entry is not None and (op.version < entry.version or (op.version == entry.version and not op.repair)):
            return False
        if entry is not None and entry.row is not None:
            self.alive[entry.row] = False
            self.dead += 1
        self.expiring.discard(op.key)
        if op.op == UPSERT and op.vector is not None:
            self.entries[op.key] = Entry(op.version, self._append(op.key, op.vector), op.value, op.expires_at)
            self.keywords.put(op.key, op.value)
            if op.expires_at is not None:
                self.expiring.add(op.key)
        else:
            self.entries[op.key] = Entry(op.version, None)
            self.keywords.remove(op.key)
        return True

    def _append(self, key: str, vector: np.ndarray) -> int:
        if self.count == len(self.vectors):
            self.vectors = np.concatenate([self.vectors, np.empty_like(self.vectors)])
            self.alive = np.concatenate([self.alive, np.zeros_like(self.alive)])
        row = self.count
        self.vectors[row] = self.prepare(vector)[0]
        self.alive[row] = True
        self.row_keys.append(key)
        self.count += 1
        return row

    def flush(self, chunk: int | None = None) -> bool:
        """Add appended rows to the FAISS index (at most ``chunk``); True when all rows are in."""
        if not self.hnsw and self.live >= self.params.exact_below:
            self.rebuild(hnsw=True)
            return True
        end = self.count if chunk is None else min(self.count, self._added + chunk)
        if end > self._added:
            self.index.add(self.vectors[self._added:end])
            self._added = end
        return self._added == self.count

    def needs_compaction(self) -> bool:
        dead = self.count - self.live
        return dead >= COMPACT_MIN_DEAD and dead >= COMPACT_DEAD_FRACTION * self.count

    def rebuild(self, hnsw: bool | None = None) -> None:
        """Keep only live rows, renumbered, in a new index (HNSW when ``hnsw``, else as before)."""
        rows = np.flatnonzero(self.alive[:self.count])
        keys = [self.row_keys[row] for row in rows]
        vectors = self.vectors[rows]
        self.hnsw = self.hnsw if hnsw is None else hnsw
        self.vectors = np.empty((max(1024, 2 * len(rows)), self.dim), dtype=np.float32)
        self.vectors[:len(rows)] = vectors
        self.alive = np.zeros(len(self.vectors), dtype=bool)
        self.alive[:len(rows)] = True
        self.count, self.row_keys, self.dead = len(rows), keys, 0
        for row, key in enumerate(keys):
            self.entries[key].row = row
        self.index = self._new_index(self.hnsw)
        self.index.add(self.vectors[:self.count])
        self._added = self.count

    def search(self, query: np.ndarray, k: int, now: int,
               keep: Callable[[str, Any], bool] | None = None) -> list[Hit]:
        """The ``k`` best live rows for ``query`` (whose key and value pass ``keep``), best first."""
        query = self.prepare(query)
        if not self._added:
            return []
        if keep is None and not self.expiring and self.dead == 0:  # the common case: every row is live
            params = _search_parameters(self.hnsw, max(self.params.ef_search, k), None, self._added)
            return self._hits(self.index.search(query, min(k, self._added), params=params))
        mask = self.alive[:self._added].copy()
        for key in self.expiring:
            entry = self.entries[key]
            if entry.row is not None and entry.row < self._added and not entry.live(now):
                mask[entry.row] = False
        if keep is not None:
            selected = [row for row in np.flatnonzero(mask)
                        if keep(self.row_keys[row], self.entries[self.row_keys[row]].value)]
            if len(selected) <= EXACT_SUBSET:
                return self._exact(query, np.asarray(selected, dtype=np.int64), k)
            mask[:] = False
            mask[selected] = True
        if not mask.any():
            return []
        k = min(k, int(mask.sum()))
        bits = None if mask.all() else np.packbits(mask, bitorder="little")
        params = _search_parameters(self.hnsw, max(self.params.ef_search, k), bits, len(mask))
        return self._hits(self.index.search(query, k, params=params))

    def keyword_search(self, query: str, k: int, now: int,
                       keep: Callable[[str, Any], bool] | None = None) -> list[Hit]:
        """The ``k`` live keys whose value best matches the words of ``query`` (BM25), best first."""
        def accepted(key: str) -> bool:
            entry = self.entries[key]
            return entry.live(now) and (keep is None or keep(key, entry.value))

        return [Hit(key, score, self.entries[key]) for key, score in self.keywords.search(query, k, accepted)]

    def _hits(self, answer: tuple[np.ndarray, np.ndarray]) -> list[Hit]:
        distances, labels = answer
        return [self._hit(int(row), float(distance)) for distance, row in zip(distances[0], labels[0], strict=True)
                if row >= 0]

    def _exact(self, query: np.ndarray, rows: np.ndarray, k: int) -> list[Hit]:
        if not len(rows):
            return []
        candidates = self.vectors[rows]
        if self.metric == "l2":
            scores = ((candidates - query) ** 2).sum(axis=1)
            order = np.argsort(scores, kind="stable")[:k]
        else:
            scores = candidates @ query[0]
            order = np.argsort(-scores, kind="stable")[:k]
        return [self._hit(int(rows[i]), float(scores[i])) for i in order]

    def _hit(self, row: int, raw: float) -> Hit:
        """FAISS's L2 is squared; the score reported is the distance itself (as Milvus reports it)."""
        key = self.row_keys[row]
        score = float(np.sqrt(max(raw, 0.0))) if self.metric == "l2" else raw
        return Hit(key, score, self.entries[key])

    def inventory(self, now: int) -> dict[str, int]:
        """The version of every key that has a live vector."""
        return {key: entry.version for key, entry in self.entries.items() if entry.live(now)}
