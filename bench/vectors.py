"""Vector search benchmark: `python -m bench.vectors` against the running stack (`ams up`).

One run: synthetic, seeded, clustered vectors (low intrinsic dimension, like text embeddings) are
appended to the log as kv.put events and go the real way from there (embedder -> memory.embeddings ->
the gateway's FAISS view and the Milvus worker); then it reports recall@10
against exact search and single-query latency p50/p99 of: the API (FAISS view), raw FAISS in this
process with the gateway's parameters, Milvus Lite (direct gRPC), and a bare Starlette endpoint.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

import faiss
import httpx
import numpy as np
from aiokafka import AIOKafkaProducer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ams import kafka_clients
from ams.auth import issue_dev_token
from ams.settings import Settings, get_settings
from bench import bare_endpoint
from commands.envelope import PUT, Event, encode, now_ms, uuid7
from commands.keys import format_positions, kafka_key, partition_for
from projections.milvus_store import MilvusStore

console = Console()
K = 10


def dataset(count: int, queries: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Points of 200 Gaussian clusters in a 24-dimensional latent space, projected to ``dim`` plus noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(200, 24)) * 3
    projection = rng.normal(size=(24, dim)) / np.sqrt(24)

    def draw(n: int) -> np.ndarray:
        latent = centres[rng.integers(0, len(centres), n)] + rng.normal(size=(n, 24))
        return (latent @ projection + 0.05 * rng.normal(size=(n, dim))).astype(np.float32)

    return draw(count), draw(queries)


def normalized(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def exact_top_k(data: np.ndarray, queries: np.ndarray) -> np.ndarray:
    scores = normalized(queries) @ normalized(data).T
    top = np.argpartition(-scores, K, axis=1)[:, :K]
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1)


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(row) & set(truth[i].tolist())) / K for i, row in enumerate(found)]))


def percentiles(seconds: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.asarray(seconds) * 1000, [50, 99])
    return float(p50), float(p99)


def progress() -> Progress:
    return Progress(TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console)


def raw_faiss(settings: Settings, data: np.ndarray) -> faiss.IndexHNSWFlat:
    """The gateway's HNSW index, built here in-process with the same parameters."""
    index = faiss.IndexHNSWFlat(data.shape[1], settings.vector_hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = settings.vector_ef_construction
    index.hnsw.efSearch = settings.vector_ef_search
    vectors = normalized(data)
    with progress() as bar:
        task = bar.add_task("raw FAISS: building HNSW", total=len(vectors))
        for start in range(0, len(vectors), 5_000):
            index.add(vectors[start:start + 5_000])
            bar.advance(task, len(vectors[start:start + 5_000]))
    return index


async def load(settings: Settings, tenant: str, data: np.ndarray) -> dict[int, int]:
    """Append a kv.put per vector straight to the log (the trusted producer path, batched); the highest
    position written in each partition. The gateway's PUT answers each write alone, which on this machine
    would make loading 100k vectors take a quarter of an hour; everything downstream is the real path."""
    producer = AIOKafkaProducer(**settings.kafka.client_options(), acks="all", enable_idempotence=True,
                                linger_ms=20, max_batch_size=1 << 20, max_request_size=16 << 20)
    await producer.start()
    positions: dict[int, int] = {}
    try:
        with progress() as bar:
            task = bar.add_task("log: appending kv.put events", total=len(data))
            for start in range(0, len(data), 2_000):
                futures = []
                for row in range(start, min(start + 2_000, len(data))):
                    event = Event(PUT, tenant, f"vec/{row}", {"embedding": np.round(data[row], 5).tolist(), "row": row},
                                  id=uuid7(), ts=now_ms(), actor="bench")
                    record_key = kafka_key(tenant, event.key)
                    futures.append(await producer.send(settings.events_topic, encode(event), key=record_key,
                                                       partition=partition_for(record_key, settings.partitions)))
                for metadata in await asyncio.gather(*futures):
                    positions[metadata.partition] = max(metadata.offset, positions.get(metadata.partition, -1))
                bar.advance(task, len(futures))
    finally:
        await kafka_clients.stop(producer)
    return positions


async def wait_for_views(api: httpx.AsyncClient, store: MilvusStore, target: dict[int, int], timeout: float) -> None:
    """Until the FAISS view (through /v1/positions) and Milvus (its marks) reflect every write."""
    total = sum(offset + 1 for offset in target.values())
    deadline = time.monotonic() + timeout
    with progress() as bar:
        faiss_task = bar.add_task("embedder -> FAISS view (gateway)", total=total)
        milvus_task = bar.add_task("embedder -> Milvus view", total=total)
        while True:
            vectors = (await api.get("/v1/positions")).json()["projections"]["vectors"]
            faiss_done = sum(min(vectors[str(p)]["applied"], offset) + 1 for p, offset in target.items())
            marks = await asyncio.to_thread(store.checkpoints, target)
            milvus_done = sum(min(marks.get(p, (-1, -1))[1], offset) + 1 for p, offset in target.items())
            bar.update(faiss_task, completed=faiss_done)
            bar.update(milvus_task, completed=milvus_done)
            if faiss_done == milvus_done == total:
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"the views did not catch up within {timeout:g}s; see `ams status` and the logs")
            await asyncio.sleep(1)


@dataclass
class Measured:
    found: list[list[int]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


async def measure(measured: Measured, call: Callable[[], Awaitable[list[int]]]) -> None:
    began = time.perf_counter()
    found = await call()
    measured.seconds.append(time.perf_counter() - began)
    measured.found.append(found)


async def run(args: argparse.Namespace) -> None:
    settings = get_settings()
    data, queries = dataset(args.count, args.queries, args.dim, args.seed)
    console.print(f"{args.count} vectors of {args.dim} dimensions, {args.queries} queries, seed {args.seed}; "
                  f"HNSW M={settings.vector_hnsw_m} efConstruction={settings.vector_ef_construction} "
                  f"efSearch={settings.vector_ef_search}")
    truth = exact_top_k(data, queries)
    index = await asyncio.to_thread(raw_faiss, settings, data)
    tenant = f"bench{uuid.uuid4().hex[:8]}"
    token = issue_dev_token(settings, tenant, ["memory:read", "memory:write"], subject="bench")
    with bare_endpoint.running(bare_endpoint.gateway_processes()) as bare_port:
        bare_url = f"http://127.0.0.1:{bare_port}"
        store = await asyncio.to_thread(MilvusStore, settings.milvus_endpoint, settings.vector_ef_search)
        paths = {name: Measured() for name in ("api", "raw", "bare", "milvus")}
        try:
            async with httpx.AsyncClient(base_url=settings.gateway_url, timeout=60,
                                         headers={"Authorization": f"Bearer {token}"}) as api, \
                    httpx.AsyncClient(base_url=bare_url, timeout=30) as bare:
                began = time.monotonic()
                target = await load(settings, tenant, data)
                await wait_for_views(api, store, target, args.timeout)
                console.print(f"log -> embedder -> memory.embeddings -> both views in {time.monotonic() - began:.0f}s "
                              f"(through {format_positions(target)})")
                # Milvus Lite searches rows still in its memtable by brute force; sealing them builds the HNSW index.
                await asyncio.to_thread(store.follow_live)
                await asyncio.to_thread(store.client.flush, store.collection(tenant))

                async def api_call(query: np.ndarray) -> list[int]:
                    response = await api.post("/v1/vector/search", json={"embedding": query.tolist(), "k": K})
                    response.raise_for_status()
                    return [int(result["key"].split("/")[1]) for result in response.json()]

                async def bare_call(query: np.ndarray) -> list[int]:
                    response = await bare.post("/search", json={"embedding": query.tolist(), "k": K})
                    response.raise_for_status()
                    return []

                async def raw_call(query: np.ndarray) -> list[int]:
                    _, labels = index.search(normalized(query.reshape(1, -1)), K)
                    return [int(label) for label in labels[0]]

                async def milvus_call(query: np.ndarray) -> list[int]:  # a blocking call on purpose: its own latency
                    hits = store.search(tenant, query, K, "", now_ms())
                    return [int(hit["key"].split("/")[1]) for hit in hits]

                calls = {"api": api_call, "raw": raw_call, "bare": bare_call, "milvus": milvus_call}
                with progress() as bar:
                    task = bar.add_task("searching, paths interleaved", total=len(queries))
                    for number, query in enumerate(queries):  # interleaved: every path sees the same machine load
                        for name, call in calls.items():
                            if name != "milvus" or number < args.milvus_queries:
                                await measure(paths[name], partial(call, query))
                        bar.advance(task)
        finally:
            store.close()
    report(paths, truth)


def report(paths: dict[str, Measured], truth: np.ndarray) -> None:
    table = Table("path", "recall@10", "p50 ms", "p99 ms", title="vector search, single queries, k=10")
    names = {"api": "API -> FAISS view (gateway)", "raw": "raw FAISS, same parameters",
             "milvus": "Milvus Lite (gRPC, direct)", "bare": "bare Starlette endpoint (HTTP only)"}
    for name, title in names.items():
        p50, p99 = percentiles(paths[name].seconds)
        quality = f"{recall(paths[name].found, truth):.4f}" if name != "bare" else "-"
        table.add_row(title, quality, f"{p50:.3f}", f"{p99:.3f}")
    console.print(table)
    budget = 2 * percentiles(paths["raw"].seconds)[0] + percentiles(paths["bare"].seconds)[0]
    api_p50, api_recall = percentiles(paths["api"].seconds)[0], recall(paths["api"].found, truth)
    console.print(f"target recall@10 >= 0.95: {'met' if api_recall >= 0.95 else 'MISSED'} ({api_recall:.4f}); "
                  f"target API p50 <= 2 x raw FAISS p50 + bare HTTP p50 = {budget:.3f} ms: "
                  f"{'met' if api_p50 <= budget else 'MISSED'} ({api_p50:.3f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.vectors", description=__doc__)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--milvus-queries", type=int, default=200, help="Milvus Lite is slower: fewer queries")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--timeout", type=float, default=1_800, help="seconds to wait for the views to catch up")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
