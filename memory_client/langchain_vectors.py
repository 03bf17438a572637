"""LangChain's ``VectorStore`` over AMS: ``AMSVectorStore``.

    store = AMSVectorStore("http://127.0.0.1:8787/v1", token, embedding=embeddings, index="docs")
    store.add_documents(documents); store.similarity_search("query", k=4, filter={"lang": "en"})

A document is one AMS key, ``lcv/<index>/:<id>`` (ids encoded as LangGraph's store encodes keys, so any string
is an id), whose value is ``{"store": "langchain", "index": ..., "page_content": ..., "metadata": {...},
"embedding": [...]}``: the embeddings are computed on the client with the ``Embeddings`` given, and AMS's
vector views index the ``embedding`` field. Writes go in one ``POST /v1/batch`` per 500 documents, reads by
id in one ``POST /v1/records/get``, searches to ``POST /v1/vector/search`` with the index and the metadata
filter as conditions (``{"lang": "en"}`` is ``{"metadata.lang": "en"}``; AMS's filter grammar). Scores are
AMS's cosine similarities. Reads carry the store's session token, so a search sees the store's own writes
once the embedder has processed them. One tenant's vectors have one dimension: indexes of different
dimensions need different tenants.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from memory_client import calls
from memory_client.calls import Call
from memory_client.client import paired_clients
from memory_client.langgraph_keys import decode_part, encode_part
from memory_client.models import Delete, Put

MAX_BATCH = 500  # AMS_MAX_BATCH_OPERATIONS' default
MAX_KEYS = 1000  # POST /v1/records/get


class AMSVectorStore(VectorStore):
    """A LangChain ``VectorStore`` whose documents live in AMS (see the module's docstring)."""

    def __init__(self, base_url: str, token: str, *, embedding: Embeddings, index: str | None = None,
                 timeout: float = 30.0) -> None:
        self._client, self._aclient = paired_clients(base_url, token, timeout=timeout)
        self._embedding = embedding
        self._index = index or "default"
        self._prefix = f"lcv/{encode_part(self._index)}/:"

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings, metadatas: list[dict[Any, Any]] | None = None,
                   *, ids: list[str] | None = None, **kwargs: Any) -> AMSVectorStore:
        """``kwargs``: ``base_url`` and ``token`` (required), ``index``, ``timeout``."""
        store = cls(kwargs.pop("base_url"), kwargs.pop("token"), embedding=embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    # Writes

    def _writes(self, texts: list[str], metadatas: list[dict[Any, Any]] | None, ids: Sequence[str | None] | None,
                vectors: list[list[float]]) -> tuple[list[str], list[Call[Any]]]:
        chosen = [given or str(uuid.uuid4()) for given in (ids or [None] * len(texts))]
        puts = [Put(self._prefix + encode_part(doc_id),
                    {"store": "langchain", "index": self._index, "page_content": text, "metadata": metadata,
                     "embedding": [float(x) for x in vector]})
                for doc_id, text, metadata, vector in zip(chosen, texts, metadatas or [{}] * len(texts), vectors,
                                                          strict=True)]
        return chosen, [calls.batch(puts[start:start + MAX_BATCH]) for start in range(0, len(puts), MAX_BATCH)]

    def add_texts(self, texts: Iterable[str], metadatas: list[dict[Any, Any]] | None = None, *,
                  ids: list[str] | None = None, **kwargs: Any) -> list[str]:
        texts = list(texts)
        chosen, writes = self._writes(texts, metadatas, ids, self._embedding.embed_documents(texts) if texts else [])
        for call in writes:
            self._client.execute(call)
        return chosen

    async def aadd_texts(self, texts: Iterable[str], metadatas: list[dict[Any, Any]] | None = None, *,
                         ids: list[str] | None = None, **kwargs: Any) -> list[str]:
        texts = list(texts)
        vectors = await self._embedding.aembed_documents(texts) if texts else []
        chosen, writes = self._writes(texts, metadatas, ids, vectors)
        for call in writes:
            await self._aclient.execute(call)
        return chosen

    def _deletes(self, ids: list[str] | None) -> list[Call[Any]]:
        if ids is None:
            raise ValueError("AMSVectorStore.delete needs the ids of the documents to delete")
        deletes = [Delete(self._prefix + encode_part(doc_id)) for doc_id in ids]
        return [calls.batch(deletes[start:start + MAX_BATCH]) for start in range(0, len(deletes), MAX_BATCH)]

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        for call in self._deletes(ids):
            self._client.execute(call)
        return True

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        for call in self._deletes(ids):
            await self._aclient.execute(call)
        return True

    # Reads

    def _document(self, key: str, value: dict[str, Any]) -> Document:
        return Document(page_content=value["page_content"], metadata=value.get("metadata") or {},
                        id=decode_part(key[len(self._prefix):]))

    def _reads(self, ids: Sequence[str]) -> list[Call[list[dict[str, Any] | None]]]:
        keys = [self._prefix + encode_part(doc_id) for doc_id in ids]
        return [calls.get_records(keys[start:start + MAX_KEYS]) for start in range(0, len(keys), MAX_KEYS)]

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        records = [record for call in self._reads(ids) for record in self._client.execute(call)]
        return [self._document(record["key"], record["value"]) for record in records if record is not None]

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        records = [record for call in self._reads(ids) for record in await self._aclient.execute(call)]
        return [self._document(record["key"], record["value"]) for record in records if record is not None]

    def _search(self, vector: list[float], k: int, filter: dict[str, Any] | None) -> Call[list[dict[str, Any]]]:
        conditions = {"store": "langchain", "index": self._index,
                      **{f"metadata.{field}": spec for field, spec in (filter or {}).items()}}
        return calls.vector_search(vector, k, filter=conditions)

    def _scored(self, hits: list[dict[str, Any]]) -> list[tuple[Document, float]]:
        return [(self._document(hit["key"], hit["value"]), float(hit["score"])) for hit in hits]

    def similarity_search_with_score(self, query: str, k: int = 4, filter: dict[str, Any] | None = None,
                                     **kwargs: Any) -> list[tuple[Document, float]]:
        vector = self._embedding.embed_query(query)
        return self._scored(self._client.execute(self._search(vector, k, filter)))

    async def asimilarity_search_with_score(self, query: str, k: int = 4, filter: dict[str, Any] | None = None,
                                            **kwargs: Any) -> list[tuple[Document, float]]:
        vector = await self._embedding.aembed_query(query)
        return self._scored(await self._aclient.execute(self._search(vector, k, filter)))

    def similarity_search(self, query: str, k: int = 4, filter: dict[str, Any] | None = None,
                          **kwargs: Any) -> list[Document]:
        return [document for document, _ in self.similarity_search_with_score(query, k, filter)]

    async def asimilarity_search(self, query: str, k: int = 4, filter: dict[str, Any] | None = None,
                                 **kwargs: Any) -> list[Document]:
        return [document for document, _ in await self.asimilarity_search_with_score(query, k, filter)]

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, filter: dict[str, Any] | None = None,
                                    **kwargs: Any) -> list[Document]:
        return [document for document, _ in self._scored(self._client.execute(self._search(embedding, k, filter)))]

    def _select_relevance_score_fn(self) -> Any:
        return lambda score: (score + 1) / 2  # cosine similarity in [-1, 1] as relevance in [0, 1]
