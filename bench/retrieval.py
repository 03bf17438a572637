"""`make bench-retrieval`: search quality and latency of the three modes, and the built-in embedder's choice.

    python -m bench.retrieval [--quick] [--json] [--memories 2000] [--queries 400]

On the WordNet set of `bench.wordnet_set` (memories are definitions; a query is a synset's lemma names or
its usage example, with its definition the one relevant memory):

1. **the embedder's choice**, in this process: each built-in embedder (`minilm`, `minilm-static`) embeds
   the memories in batches (texts/s) and each query alone (p50 ms per text); nDCG@10 and recall@10 of an
   exact cosine search over its vectors;
2. **the API**, against the running stack (`ams up`): the memories are written as ``{"text": ...}`` values
   of a fresh tenant, and each query is searched in each mode (``semantic``, ``keyword``, ``hybrid``,
   ``k=10``) through ``POST /v1/vector/search``: nDCG@10, recall@10, p50 and p99 of the round trip;
3. **beside it, in this process**: the raw index calls the gateway makes (the FAISS search, the BM25
   search, both plus the fusion) on an index holding the same vectors, and the embedder's own time for
   one query;
4. **the alternative to the BM25 projection**: PostgreSQL's full-text search (`english` configuration,
   the query's words OR-ed, ranked by `ts_rank_cd`) over the same tenant's rows of the PostgreSQL
   projection (`kv_current`), called directly: its quality, and its latency without an index of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import numpy as np
import orjson
from rich.table import Table

from ams.auth import issue_dev_token
from ams.settings import Settings, get_settings
from bench.common import Latencies, console, progress
from bench.wordnet_set import LabeledSet, Query, load
from commands.keys import format_positions, parse_positions
from projections.embeddings import UPSERT, EmbeddingOp
from projections.faiss_index import IndexParams, TenantIndex
from projections.keyword_index import tokens
from projections.text_embedder import EMBEDDERS, TextEmbedder
from queries.fusion import reciprocal_rank_fusion

MODES = ("semantic", "keyword", "hybrid")
KINDS = ("words", "example")
K = 10
BATCH = 500


@dataclass
class Quality:
    """nDCG@10 and recall@10 per query kind (one relevant memory per query)."""

    ndcg: dict[str, list[float]] = field(default_factory=lambda: {kind: [] for kind in KINDS})
    recall: dict[str, list[float]] = field(default_factory=lambda: {kind: [] for kind in KINDS})

    def add(self, query: Query, ranked: list[str]) -> None:
        rank = ranked.index(query.relevant) + 1 if query.relevant in ranked[:K] else None
        self.ndcg[query.kind].append(1 / math.log2(rank + 1) if rank else 0.0)
        self.recall[query.kind].append(1.0 if rank else 0.0)

    def as_json(self) -> dict[str, Any]:
        return {f"{metric}@10_{kind}": round(float(np.mean(values[kind])), 4)
                for metric, values in (("ndcg", self.ndcg), ("recall", self.recall)) for kind in KINDS}


def timed(latencies: Latencies, call: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    result = call()
    latencies.samples.append((time.perf_counter() - start) * 1000)
    return result


def sample_queries(labeled: LabeledSet, count: int) -> list[Query]:
    """``count`` queries, half of each kind (the first of each in set order)."""
    chosen = []
    for kind in KINDS:
        chosen += [query for query in labeled.queries if query.kind == kind][:count // 2]
    return chosen


def embedder_choice(labeled: LabeledSet, queries: list[Query]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Each built-in embedder's quality and speed; and the vectors of the default one (for part 3)."""
    keys, texts = list(labeled.memories), list(labeled.memories.values())
    report: dict[str, Any] = {}
    vectors: dict[str, np.ndarray] = {}
    for name, factory in EMBEDDERS.items():
        embedder: TextEmbedder = factory()
        embedder.encode(texts[:32])  # warm up
        with progress.status(f"{name}: embedding {len(texts)} memories"):
            start = time.perf_counter()
            memory_vectors = embedder.encode(texts)
            texts_per_second = len(texts) / (time.perf_counter() - start)
        alone, quality, query_vectors = Latencies(f"{name} one text"), Quality(), []
        for query in queries:
            vector = timed(alone, lambda query=query, embedder=embedder: embedder.encode([query.text]))[0]  # type: ignore[misc]
            query_vectors.append(vector)
            order = np.argsort(-(memory_vectors @ vector), kind="stable")[:K]
            quality.add(query, [keys[i] for i in order])
        report[name] = {"texts_per_second": round(texts_per_second, 1), "one_text": alone.as_json(),
                        **quality.as_json()}
        if name == "minilm":
            vectors = {"memories": memory_vectors, "queries": np.vstack(query_vectors)}
    return report, vectors


async def write_memories(api: httpx.AsyncClient, labeled: LabeledSet) -> str:
    """Write every memory as a ``{"text": ...}`` value in batches; the token covering all of them."""
    positions: dict[int, int] = {}
    items = list(labeled.memories.items())
    for start in range(0, len(items), BATCH):
        operations = [{"op": "put", "key": key, "value": {"text": text}} for key, text in items[start:start + BATCH]]
        response = await api.post("/v1/batch", json={"operations": operations})
        response.raise_for_status()
        for partition, offset in parse_positions(response.headers["X-AMS-Position"]).items():
            positions[partition] = max(offset, positions.get(partition, -1))
    return format_positions(positions)


async def wait_for(api: httpx.AsyncClient, token: str, timeout: float = 600) -> None:
    """Until a search carrying ``token`` answers (the embedder has embedded every memory)."""
    deadline = time.monotonic() + timeout
    with progress.status("waiting for the embedder and the FAISS view to reach the writes"):
        while True:
            response = await api.post("/v1/vector/search", json={"text": "warm up", "mode": "keyword"},
                                      headers={"X-AMS-Min-Position": token})
            if response.status_code == 200:
                return
            if response.status_code != 504 or time.monotonic() > deadline:
                raise SystemExit(f"the search never caught up with the writes: {response.text}")


async def against_stack(settings: Settings, labeled: LabeledSet, queries: list[Query]) -> dict[str, Any]:
    """Parts 2 and 4, on a fresh tenant."""
    tenant = f"bench-retrieval-{uuid.uuid4().hex[:8]}"
    api = await through_api(settings, tenant, labeled, queries)
    return {"api": api, "postgres_fts": await postgres_fts(settings, tenant, labeled, queries)}


async def through_api(settings: Settings, tenant: str, labeled: LabeledSet, queries: list[Query]) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {issue_dev_token(settings, tenant, ['memory:read', 'memory:write'])}"}
    report: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=settings.gateway_url, headers=headers, timeout=60) as api:
        with progress.status(f"writing {len(labeled.memories)} memories"):
            token = await write_memories(api, labeled)
        await wait_for(api, token)
        for mode in MODES:
            latencies, quality = Latencies(mode), Quality()
            with progress.status(f"{mode}: {len(queries)} searches through the API"):
                for query in queries:
                    start = time.perf_counter()
                    response = await api.post("/v1/vector/search", json={"text": query.text, "mode": mode, "k": K})
                    latencies.samples.append((time.perf_counter() - start) * 1000)
                    response.raise_for_status()
                    quality.add(query, [hit["key"] for hit in response.json()])
            report[mode] = {"api": latencies.as_json(), **quality.as_json()}
    return report


POSTGRES_FTS = """
    SELECT key FROM "{schema}".kv_current, to_tsquery('english', $2) AS query
    WHERE tenant = $1 AND NOT deleted AND to_tsvector('english', value->>'text') @@ query
    ORDER BY ts_rank_cd(to_tsvector('english', value->>'text'), query) DESC, key LIMIT 10
"""


async def postgres_fts(settings: Settings, tenant: str, labeled: LabeledSet, queries: list[Query]) -> dict[str, Any]:
    """PostgreSQL's full-text search over the tenant's current rows: quality and latency of the raw call."""
    connection = await asyncpg.connect(settings.postgres_dsn)
    try:
        deadline = time.monotonic() + 600
        with progress.status("waiting for the PostgreSQL projection to hold every memory"):
            while await connection.fetchval(f'SELECT count(*) FROM "{settings.postgres_schema}".kv_current '
                                            "WHERE tenant = $1 AND NOT deleted",
                                            tenant) < len(labeled.memories):
                if time.monotonic() > deadline:
                    raise SystemExit("the PostgreSQL projection never caught up with the writes")
                await asyncio.sleep(0.5)
        latencies, quality = Latencies("postgres_fts"), Quality()
        for query in queries:
            terms = " | ".join(tokens(query.text))
            start = time.perf_counter()
            sql = POSTGRES_FTS.format(schema=settings.postgres_schema)
            rows = await connection.fetch(sql, tenant, terms) if terms else []
            latencies.samples.append((time.perf_counter() - start) * 1000)
            quality.add(query, [row["key"] for row in rows])
    finally:
        await connection.close()
    return {"raw": latencies.as_json(), **quality.as_json()}


def raw_calls(labeled: LabeledSet, queries: list[Query], vectors: dict[str, np.ndarray]) -> dict[str, Any]:
    """The gateway's own index calls, on an index holding the same memories and vectors."""
    index = TenantIndex(vectors["memories"].shape[1], "cosine", IndexParams())
    for version, (key, text) in enumerate(labeled.memories.items()):
        index.apply(EmbeddingOp(UPSERT, "bench", key, version, vectors["memories"][version], "cosine",
                                {"text": text}))
    index.flush()
    now = int(time.time() * 1000)
    semantic, keyword, hybrid = Latencies("faiss"), Latencies("bm25"), Latencies("hybrid")
    for query, vector in zip(queries, vectors["queries"], strict=True):
        timed(semantic, lambda vector=vector: index.search(vector, K, now))  # type: ignore[misc]
        timed(keyword, lambda query=query: index.keyword_search(query.text, K, now))  # type: ignore[misc]

        def both(query: Query = query, vector: np.ndarray = vector) -> object:
            rankings = [[{"key": hit.key} for hit in index.search(vector, 50, now)],
                        [{"key": hit.key} for hit in index.keyword_search(query.text, 50, now)]]
            return reciprocal_rank_fusion(rankings, K)

        timed(hybrid, both)
    return {"semantic": semantic.as_json(), "keyword": keyword.as_json(), "hybrid": hybrid.as_json()}


def print_report(results: dict[str, Any]) -> None:
    choice = Table(title=f"Built-in embedders on the WordNet set ({results['memories']} memories, "
                   f"{results['queries']} queries; exact cosine search, in-process)")
    for column in ("embedder", "nDCG@10 words", "nDCG@10 example", "recall@10 words", "recall@10 example",
                   "p50 ms / text", "texts/s batched"):
        choice.add_column(column, justify="right")
    for name, row in results["embedders"].items():
        choice.add_row(name, *(f"{row[f'{metric}@10_{kind}']:.3f}" for metric in ("ndcg", "recall") for kind in KINDS
                               ), f"{row['one_text']['p50_ms']:.2f}", f"{row['texts_per_second']:.0f}")
    console.print(choice)
    if "api" not in results:
        return
    modes = Table(title="Search modes through POST /v1/vector/search (k=10), beside the raw index calls")
    for column in ("mode", "nDCG@10 words", "nDCG@10 example", "recall@10 words", "recall@10 example",
                   "API p50 ms", "API p99 ms", "raw index p50 ms", "raw index p99 ms"):
        modes.add_column(column, justify="right")
    for mode in MODES:
        row, raw = results["api"][mode], results["raw"][mode]
        modes.add_row(mode, *(f"{row[f'{metric}@10_{kind}']:.3f}" for metric in ("ndcg", "recall") for kind in KINDS),
                      f"{row['api']['p50_ms']:.2f}", f"{row['api']['p99_ms']:.2f}", f"{raw['p50_ms']:.3f}",
                      f"{raw['p99_ms']:.3f}")
    console.print(modes)
    fts = results["postgres_fts"]
    console.print("PostgreSQL full-text search on the same rows (the alternative to the BM25 projection): nDCG@10 "
                  + ", ".join(f"{kind} {fts[f'ndcg@10_{kind}']:.3f}" for kind in KINDS) + "; recall@10 "
                  + ", ".join(f"{kind} {fts[f'recall@10_{kind}']:.3f}" for kind in KINDS)
                  + f"; raw call p50 {fts['raw']['p50_ms']:.2f} ms, p99 {fts['raw']['p99_ms']:.2f} ms (no index).")
    one = results["embedders"]["minilm"]["one_text"]
    console.print(f"The embedder's own time for one query (minilm, in-process): p50 {one['p50_ms']:.2f} ms, "
                  f"p99 {one['p99_ms']:.2f} ms: part of every semantic and hybrid search by text.")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.retrieval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short smoke run: 300 memories, 40 queries")
    parser.add_argument("--json", action="store_true", help="one JSON document on standard output, no table")
    parser.add_argument("--memories", type=int, help="memories in the set (default 2000; quick 300)")
    parser.add_argument("--queries", type=int, help="queries, half of each kind (default 400; quick 40)")
    parser.add_argument("--no-api", action="store_true", help="only part 1 (no running stack needed)")
    args = parser.parse_args()
    labeled = load(args.memories or (300 if args.quick else 2000))
    queries = sample_queries(labeled, args.queries or (40 if args.quick else 400))
    if not queries:
        parser.error("--queries must be 2 or more")
    embedders, vectors = embedder_choice(labeled, queries)
    results: dict[str, Any] = {"memories": len(labeled.memories), "queries": len(queries), "embedders": embedders}
    if not args.no_api:
        results |= asyncio.run(against_stack(get_settings(), labeled, queries))
        results["raw"] = raw_calls(labeled, queries, vectors)
    if args.json:
        print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
    else:
        print_report(results)


if __name__ == "__main__":
    main()
