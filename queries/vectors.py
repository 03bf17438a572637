"""Search: ``POST /v1/vector/search`` by meaning, by words or both, over the FAISS view (default) or Milvus.

``{"text": "...", "mode": "semantic" | "keyword" | "hybrid", "filter": {...}, "k": 5}``, or
``{"embedding": [...]}`` for a vector the caller computed; answers ``[{key, score, value, version}]``,
best first. ``semantic`` embeds the text with the built-in embedder (or takes the embedding) and searches
the vectors; ``keyword`` ranks by BM25 over the same view's keyword index; ``hybrid`` fuses the two by
reciprocal rank (score = the fused score). Keyword and hybrid are answered by the FAISS view only.
The tenant is the token's: FAISS searches only that tenant's index and Milvus only that tenant's
collection. ``X-AMS-Min-Position`` waits until the chosen view reflects the embedder's processing of
those ``memory.events`` positions (every mode: the keyword index is part of the FAISS view).
With ``X-AMS-Sandbox`` the search reads the sandbox's own FAISS view, fed by its own embeddings stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from pymilvus.exceptions import MilvusException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ams.auth import ADMIN, READ
from ams.http import ApiError, json_response, read_json
from ams.namespaces import Namespace
from ams.settings import Settings
from commands.envelope import now_ms
from commands.keys import parse_positions
from commands.vectors import DimensionUnavailable, InvalidVector, extract_vector
from projections.embedder import TenantDimensions
from projections.faiss_feed import FaissFeed
from projections.faiss_index import Hit
from projections.milvus_store import CollectionReleased, GenerationUnknown, MilvusStore
from projections.text_embedder import TextEmbedderUnavailable, text_embedder
from projections.vector_filter import Condition, InvalidFilter, matches_all, milvus_expression, parse_filter
from queries.context import authorize, context
from queries.fusion import reciprocal_rank_fusion
from queries.params import within_log

BACKENDS = ("faiss", "milvus")
SEMANTIC, KEYWORD, HYBRID = "semantic", "keyword", "hybrid"
MODES = (SEMANTIC, KEYWORD, HYBRID)
SEARCH_FIELDS = {"embedding", "text", "k", "filter", "backend", "mode"}
HYBRID_DEPTH = 50  # how many of each mode's best a hybrid search fuses (at least 2k)
MILVUS_POLL_SECONDS = 0.1
MILVUS_FOLLOW_SECONDS = 0.5  # how stale a gateway's idea of the live Milvus generation may be (rebuilds)


class VectorServices:
    """What vector search reads in one namespace: the in-process FAISS view, Milvus (live memory only), and
    each tenant's dimension. A sandbox's FAISS view reads the sandbox's own embeddings stream."""

    def __init__(self, settings: Settings, redis_client: aioredis.Redis, namespace: Namespace) -> None:
        self.settings = settings
        self.has_milvus = namespace.is_live
        self.feed = FaissFeed(settings, None if namespace.is_live else namespace.embeddings_topic)
        self.dimensions = TenantDimensions(redis_client, settings, namespace)
        self._milvus: MilvusStore | None = None

    async def start(self) -> None:
        await self.feed.start()

    async def stop(self) -> None:
        await self.feed.stop()
        if self._milvus is not None:
            self._milvus.close()

    async def milvus(self) -> MilvusStore:
        if self._milvus is None:
            settings = self.settings
            self._milvus = await asyncio.to_thread(MilvusStore, settings.milvus_endpoint, settings.vector_ef_search)
        return self._milvus

    def positions(self, heads: dict[int, int]) -> dict[str, dict[str, int]]:
        """How far the FAISS view reflects the log: the embedder's marks it has applied, and the lag."""
        marks = self.feed.view.marks
        return {str(partition): {"applied": marks.get(partition, -1),
                                 "lag": max(0, head - 1 - marks.get(partition, -1))}
                for partition, head in sorted(heads.items())}


def services(request: Request) -> VectorServices:
    """The vector views of the namespace the request names: live, or the sandbox in ``X-AMS-Sandbox``."""
    found: VectorServices = request.app.state.namespaces.resolve(request).vectors
    return found


def _k(body: dict[str, Any], settings: Settings) -> int:
    k = body.get("k", 5)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= settings.vector_max_k:
        raise ApiError(400, "invalid_k", f"k must be a whole number from 1 to {settings.vector_max_k}, got {k!r}")
    return k


def _mode(body: dict[str, Any]) -> str:
    mode = body.get("mode", SEMANTIC)
    if mode not in MODES:
        raise ApiError(400, "invalid_mode", f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    return str(mode)


def _text(body: dict[str, Any], settings: Settings) -> str | None:
    if "text" not in body:
        return None
    text = body["text"]
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "invalid_text", '"text" must be a non-empty string')
    if len(text) > settings.max_search_text_chars:
        raise ApiError(413, "text_too_long", f'"text" has {len(text)} characters; the limit is '
                       f"{settings.max_search_text_chars}")
    return text


def _embedding(body: dict[str, Any], settings: Settings) -> np.ndarray | None:
    if "embedding" not in body:
        return None
    try:
        vector = extract_vector({settings.vector_field: body["embedding"]}, settings)
    except InvalidVector as error:
        message = str(error).replace(repr(settings.vector_field), '"embedding"')
        raise ApiError(422, "invalid_vector", message) from None
    if not isinstance(vector, list):
        raise ApiError(422, "invalid_vector", '"embedding" must be a non-empty list of numbers')
    return np.asarray(vector, dtype=np.float32)


def _check_query(mode: str, text: str | None, embedding: np.ndarray | None) -> None:
    """Which of "text" and "embedding" each mode takes."""
    if mode == SEMANTIC and (text is None) == (embedding is None):
        raise ApiError(400, "invalid_query", 'send exactly one of "embedding" (a list of numbers) or "text"')
    if mode != SEMANTIC and text is None:
        raise ApiError(400, "invalid_query", f'mode "{mode}" searches by words: send "text"')
    if mode == KEYWORD and embedding is not None:
        raise ApiError(400, "invalid_query", 'mode "keyword" takes "text" only; "embedding" is for the semantic '
                       'and hybrid modes')


async def _embed(text: str, settings: Settings) -> np.ndarray:
    try:
        embedder = text_embedder(settings)
    except TextEmbedderUnavailable as error:
        raise ApiError(503, "text_embedder_unavailable", str(error)) from None
    if embedder is None:
        raise ApiError(422, "no_text_embedder", "this deployment's text embedder is off (AMS_TEXT_EMBEDDER=none), "
                       'so "text" cannot be searched by meaning: send an "embedding", or use mode "keyword"')
    return (await asyncio.to_thread(embedder.encode, [text]))[0]


async def _wait(request: Request, vectors: VectorServices, backend: str) -> None:
    token = request.headers.get("x-ams-min-position")
    if not token:
        return
    positions = parse_positions(token)
    if any(partition >= context(request).partitions for partition in positions):
        raise ApiError(400, "invalid_token", f"consistency token {token!r} names a partition this log does not have")
    await within_log(request, positions, "X-AMS-Min-Position")
    timeout = vectors.settings.read_wait_timeout
    if backend == "faiss":
        reached = await vectors.feed.wait_reached(positions, timeout)
    else:
        reached = await _wait_milvus(await vectors.milvus(), positions, timeout)
    if not reached:
        raise ApiError(504, "consistency_timeout",
                       f"the {backend} vector view has not reached {token} within {timeout:g}s; retry the search")


async def _wait_milvus(store: MilvusStore, positions: dict[int, int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await asyncio.to_thread(store.follow_live, MILVUS_FOLLOW_SECONDS)
            checkpoints = await asyncio.to_thread(store.checkpoints, positions)
        except (CollectionReleased, GenerationUnknown):
            checkpoints = {}  # Milvus restarting: asked again on the next poll
        marks = {partition: mark for partition, (_, mark) in checkpoints.items()}
        if all(marks.get(partition, -1) >= offset for partition, offset in positions.items()):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(MILVUS_POLL_SECONDS)


def _keep(conditions: list[Condition]) -> Callable[[str, Any], bool] | None:
    return (lambda key, value: matches_all(conditions, key, value)) if conditions else None


def _results(hits: list[Hit]) -> list[dict[str, Any]]:
    return [{"key": hit.key, "score": hit.score, "value": hit.entry.value, "version": hit.entry.version}
            for hit in hits]


def _faiss_search(vectors: VectorServices, tenant: str, query: np.ndarray, k: int,
                  conditions: list[Condition]) -> list[dict[str, Any]]:
    index = vectors.feed.view.tenants.get(tenant)
    if index is None:
        return []
    _check_dimension(len(query), index.dim)
    return _results(index.search(query, k, now_ms(), _keep(conditions)))


def _keyword_search(vectors: VectorServices, tenant: str, text: str, k: int,
                    conditions: list[Condition]) -> list[dict[str, Any]]:
    index = vectors.feed.view.tenants.get(tenant)
    if index is None:
        return []
    return _results(index.keyword_search(text, k, now_ms(), _keep(conditions)))


def _hybrid_search(vectors: VectorServices, tenant: str, text: str, query: np.ndarray, k: int,
                   conditions: list[Condition]) -> list[dict[str, Any]]:
    depth = min(max(HYBRID_DEPTH, 2 * k), vectors.settings.vector_max_k)
    semantic = _faiss_search(vectors, tenant, query, depth, conditions)
    keyword = _keyword_search(vectors, tenant, text, depth, conditions)
    return reciprocal_rank_fusion([semantic, keyword], k)


async def _milvus_search(vectors: VectorServices, tenant: str, query: np.ndarray, k: int,
                         conditions: list[Condition]) -> list[dict[str, Any]]:
    try:
        try:
            return await _milvus_attempt(vectors, tenant, query, k, conditions)
        except CollectionReleased:  # Milvus restarted: the second attempt loads the collection again
            return await _milvus_attempt(vectors, tenant, query, k, conditions)
    except (MilvusException, ConnectionError) as error:
        raise ApiError(503, "milvus_unavailable", f"the Milvus view at {vectors.settings.milvus_endpoint} failed "
                       f'the search ({error}); retry, or search the FAISS view ("backend": "faiss")') from None


async def _milvus_attempt(vectors: VectorServices, tenant: str, query: np.ndarray, k: int,
                          conditions: list[Condition]) -> list[dict[str, Any]]:
    store = await vectors.milvus()
    await asyncio.to_thread(store.follow_live, MILVUS_FOLLOW_SECONDS)
    shape = await asyncio.to_thread(store.tenant_shape, tenant)
    if shape is None:
        return []
    _check_dimension(len(query), shape[0])
    return await asyncio.to_thread(store.search, tenant, query, k, milvus_expression(conditions), now_ms())


def _check_dimension(given: int, dimension: int) -> None:
    if given != dimension:
        raise ApiError(422, "wrong_dimension",
                       f"the query vector has {given} dimensions; this tenant's vectors have {dimension}")


async def search(request: Request) -> Response:
    principal = authorize(request, READ)
    vectors = services(request)
    settings = vectors.settings
    body = await read_json(request, settings.max_body_bytes)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_query", 'the body must be an object such as {"text": "...", "k": 5}')
    unknown = sorted(set(body) - SEARCH_FIELDS)
    if unknown:
        raise ApiError(400, "invalid_query", f"unknown fields {unknown}; expected some of {sorted(SEARCH_FIELDS)}")
    k, mode = _k(body, settings), _mode(body)
    backend = _backend(body, vectors, mode)
    try:
        conditions = parse_filter(body.get("filter"))
        if backend == "milvus":
            milvus_expression(conditions)
    except InvalidFilter as error:
        raise ApiError(400, "invalid_filter", str(error)) from None
    text, embedding = _text(body, settings), _embedding(body, settings)
    _check_query(mode, text, embedding)
    query = None if mode == KEYWORD else await _query_vector(vectors, principal.tenant, text, embedding)
    await _wait(request, vectors, backend)
    return json_response(await _run(vectors, principal.tenant, mode, backend, text, query, k, conditions))


async def _query_vector(vectors: VectorServices, tenant: str, text: str | None,
                        embedding: np.ndarray | None) -> np.ndarray:
    """The semantic half's vector: the caller's, or its text embedded; of the tenant's dimension."""
    query = embedding if embedding is not None else await _embed(str(text), vectors.settings)
    try:
        dimension = await vectors.dimensions.dimension(tenant)
    except DimensionUnavailable as error:
        raise ApiError(503, "vector_dimension_unavailable", f"{error}; retry the search") from None
    if dimension is not None:
        _check_dimension(len(query), dimension)
    return query


async def _run(vectors: VectorServices, tenant: str, mode: str, backend: str, text: str | None,
               query: np.ndarray | None, k: int, conditions: list[Condition]) -> list[dict[str, Any]]:
    if query is None:
        return _keyword_search(vectors, tenant, str(text), k, conditions)
    if mode == HYBRID:
        return _hybrid_search(vectors, tenant, str(text), query, k, conditions)
    if backend == "faiss":
        return _faiss_search(vectors, tenant, query, k, conditions)
    return await _milvus_search(vectors, tenant, query, k, conditions)


def _backend(body: dict[str, Any], vectors: VectorServices, mode: str) -> str:
    """The view that answers: FAISS (default), or Milvus for a semantic search of live memory."""
    backend = body.get("backend", vectors.settings.vector_backend if vectors.has_milvus and mode == SEMANTIC
                       else "faiss")
    if backend not in BACKENDS:
        raise ApiError(400, "invalid_backend", f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "milvus" and not vectors.has_milvus:
        raise ApiError(422, "no_milvus_view", "a sandbox's vectors are in its FAISS view only (Milvus holds live "
                       'memory): search without "backend", or with "backend": "faiss"')
    if backend == "milvus" and mode != SEMANTIC:
        raise ApiError(422, "no_keyword_index", f'mode "{mode}" is answered by the FAISS view, which holds the '
                       'keyword index: search without "backend", or with "backend": "faiss"')
    return str(backend)


async def inventory(request: Request) -> Response:
    """The version of each of the caller tenant's keys that has a live vector in this gateway's FAISS view
    (for `ams reindex`)."""
    principal = authorize(request, ADMIN)
    vectors = services(request)
    index = vectors.feed.view.tenants.get(principal.tenant)
    keys = index.inventory(now_ms()) if index is not None else {}
    return json_response({"tenant": principal.tenant, "view": "faiss", "keys": keys})


routes = [
    Route("/v1/vector/search", search, methods=["POST"]),
    Route("/v1/vector/inventory", inventory, methods=["GET"]),
]
