"""Reciprocal rank fusion: how a hybrid search merges the semantic and the keyword rankings.

Each result scores the sum over rankings of 1 / (60 + its rank there) (rank 1 is the best); scores of
different scales (cosine similarity, BM25) never need to be compared, only ranks. 60 is the constant of
Cormack, Clarke and Buettcher (2009), which the peers (Elasticsearch, Weaviate, pgvector recipes) use too.
"""

from __future__ import annotations

from typing import Any

RRF_K = 60


def reciprocal_rank_fusion(rankings: list[list[dict[str, Any]]], k: int) -> list[dict[str, Any]]:
    """The ``k`` best of several rankings of ``{key, score, ...}`` results, each with its fused score."""
    fused: dict[str, float] = {}
    first: dict[str, dict[str, Any]] = {}
    for ranking in rankings:
        for rank, result in enumerate(ranking, start=1):
            fused[result["key"]] = fused.get(result["key"], 0.0) + 1.0 / (RRF_K + rank)
            first.setdefault(result["key"], result)
    best = sorted(fused, key=lambda key: (-fused[key], key))[:k]
    return [first[key] | {"score": fused[key]} for key in best]
