"""The FAISS view without Kafka: versions decide, deletes and expiry hide, HNSW stays accurate, snapshots round-trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from projections.embeddings import DELETE, UPSERT, EmbeddingOp
from projections.faiss_index import IndexParams, TenantIndex
from projections.faiss_view import FaissView
from projections.vector_filter import matches_all, parse_filter

SMALL = IndexParams(exact_below=50, hnsw_m=16, ef_construction=80, ef_search=64)


def upsert(key: str, version: int, vector: list[float], value: object = None, **extra: object) -> EmbeddingOp:
    return EmbeddingOp(UPSERT, "t", key, version, np.asarray(vector, dtype=np.float32), "cosine",
                       value if value is not None else {}, **extra)  # type: ignore[arg-type]


def keys(index: TenantIndex, query: list[float], k: int = 10, now: int = 0, **kwargs: object) -> list[str]:
    return [hit.key for hit in index.search(np.asarray(query, dtype=np.float32), k, now, **kwargs)]  # type: ignore[arg-type]


def test_newer_versions_replace_and_older_ones_are_ignored() -> None:
    index = TenantIndex(2, "cosine", SMALL)
    assert index.apply(upsert("a", 5, [1, 0]))
    assert not index.apply(upsert("a", 3, [0, 1]))  # late and older: ignored
    assert not index.apply(upsert("a", 5, [0, 1]))  # a duplicate: ignored
    index.flush()
    assert keys(index, [1, 0], k=1) == ["a"]
    assert index.apply(upsert("a", 7, [0, 1]))
    index.flush()
    hit = index.search(np.asarray([0, 1], dtype=np.float32), 1, 0)[0]
    assert (hit.key, hit.entry.version, round(hit.score, 5)) == ("a", 7, 1.0)


def test_a_delete_leaves_a_tombstone_that_beats_late_older_upserts() -> None:
    index = TenantIndex(2, "cosine", SMALL)
    index.apply(upsert("a", 1, [1, 0]))
    index.apply(EmbeddingOp(DELETE, "t", "a", 4))
    assert not index.apply(upsert("a", 2, [1, 0]))  # a zombie's late write
    index.flush()
    assert keys(index, [1, 0]) == []
    assert index.inventory(0) == {}


def test_a_repair_rewrites_an_entry_at_the_same_version() -> None:
    index = TenantIndex(2, "cosine", SMALL)
    index.apply(upsert("a", 3, [1, 0], {"n": "wrong"}))
    assert index.apply(EmbeddingOp(UPSERT, "t", "a", 3, np.asarray([0, 1], dtype=np.float32), "cosine", {"n": "ok"},
                                   repair=True))
    index.flush()
    assert index.search(np.asarray([0, 1], dtype=np.float32), 1, 0)[0].entry.value == {"n": "ok"}


def test_expired_vectors_are_not_found() -> None:
    index = TenantIndex(2, "cosine", SMALL)
    index.apply(upsert("short", 1, [1, 0], expires_at=1_000))
    index.apply(upsert("long", 2, [1, 0.1]))
    index.flush()
    assert keys(index, [1, 0], now=999) == ["short", "long"]
    assert keys(index, [1, 0], now=1_000) == ["long"]
    assert index.inventory(1_000) == {"long": 2}


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_scores_follow_the_metric(metric: str) -> None:
    index = TenantIndex(2, metric, SMALL)  # type: ignore[arg-type]
    index.apply(EmbeddingOp(UPSERT, "t", "near", 1, np.asarray([2, 0], dtype=np.float32), metric, {}))  # type: ignore[arg-type]
    index.apply(EmbeddingOp(UPSERT, "t", "far", 2, np.asarray([0, 3], dtype=np.float32), metric, {}))  # type: ignore[arg-type]
    index.flush()
    hits = index.search(np.asarray([1, 0], dtype=np.float32), 2, 0)
    assert [hit.key for hit in hits] == ["near", "far"]
    expected = {"cosine": [1.0, 0.0], "ip": [2.0, 0.0], "l2": [1.0, 10 ** 0.5]}[metric]
    assert [round(hit.score, 4) for hit in hits] == [round(score, 4) for score in expected]


def clustered(count: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))
    return (centres[rng.integers(0, 20, count)] + 0.3 * rng.normal(size=(count, dim))).astype(np.float32)


def test_a_grown_tenant_switches_to_hnsw_and_keeps_recall() -> None:
    data = clustered(2_000, 32, seed=1)
    index = TenantIndex(32, "cosine", SMALL)
    for row, vector in enumerate(data):
        index.apply(upsert(f"k{row}", row, list(vector)))
    index.flush()
    assert index.hnsw
    normalized = data / np.linalg.norm(data, axis=1, keepdims=True)
    queries = clustered(50, 32, seed=2)
    recall = []
    for query in queries:
        exact = {f"k{row}" for row in np.argsort(-(normalized @ (query / np.linalg.norm(query))))[:10]}
        recall.append(len(exact & set(keys(index, list(query)))) / 10)
    assert np.mean(recall) >= 0.95


def test_deleted_rows_are_excluded_then_compacted_away() -> None:
    data = clustered(3_000, 16, seed=3)
    index = TenantIndex(16, "l2", SMALL)
    for row, vector in enumerate(data):
        index.apply(EmbeddingOp(UPSERT, "t", f"k{row}", row, vector, "l2", {"row": row}))
    index.flush()
    assert index.hnsw
    for row in range(0, 3_000, 2):
        index.apply(EmbeddingOp(DELETE, "t", f"k{row}", 10_000 + row))
    index.flush()
    found = keys(index, list(data[0]), k=50)
    assert found and all(int(key[1:]) % 2 == 1 for key in found)
    assert index.needs_compaction()
    index.rebuild()
    assert index.count == index.live == 1_500
    assert all(int(key[1:]) % 2 == 1 for key in keys(index, list(data[0]), k=50))


def test_filtered_search_is_exact_over_the_matching_records() -> None:
    index = TenantIndex(2, "cosine", SMALL)
    for row in range(200):
        angle = row / 200
        index.apply(upsert(f"k{row}", row, [1 - angle, angle], {"kind": "fact" if row % 3 == 0 else "note",
                                                                "score": row / 200}))
    index.flush()
    conditions = parse_filter({"kind": "fact", "score": {"gte": 0.5}})
    hits = index.search(np.asarray([0, 1], dtype=np.float32), 5, 0,
                        lambda key, value: matches_all(conditions, key, value))
    assert [hit.key for hit in hits] == ["k198", "k195", "k192", "k189", "k186"]


def test_a_snapshot_round_trips_the_view_with_its_checkpoint(tmp_path: Path) -> None:
    view = FaissView(SMALL)
    data = clustered(300, 8, seed=4)
    for row, vector in enumerate(data):
        view.apply(EmbeddingOp(UPSERT, "big", f"k{row}", row, vector, "cosine", {"row": row},
                               expires_at=5_000 if row == 7 else None))
    view.apply(EmbeddingOp(DELETE, "big", "k3", 900))
    view.apply(EmbeddingOp(UPSERT, "small", "only", 1, np.ones(3, dtype=np.float32), "ip", {"x": 1}))
    view.checkpoints, view.marks = {0: 10, 2: 7}, {2: 41}
    path = tmp_path / "view.npz"
    view.save(path)
    loaded = FaissView.load(path, SMALL)
    assert (loaded.checkpoints, loaded.marks) == ({0: 10, 2: 7}, {2: 41})
    assert loaded.tenants["big"].hnsw and loaded.tenants["small"].metric == "ip"
    for name in ("big", "small"):
        query = data[5] if name == "big" else np.ones(3, dtype=np.float32)
        before = [(hit.key, hit.entry.version) for hit in view.tenants[name].search(query, 10, 0)]
        assert [(hit.key, hit.entry.version) for hit in loaded.tenants[name].search(query, 10, 0)] == before
    assert "k3" not in loaded.tenants["big"].inventory(0)
    assert "k7" in loaded.tenants["big"].inventory(4_999) and "k7" not in loaded.tenants["big"].inventory(5_000)
    assert not loaded.apply(EmbeddingOp(UPSERT, "big", "k3", 800, data[3], "cosine", {}))  # the tombstone survived
