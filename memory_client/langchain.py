"""LangChain's key-value stores over AMS: ``AMSKVStore`` (JSON values) and ``AMSByteStore`` (bytes).

    store = AMSKVStore("http://127.0.0.1:8787/v1", token, namespace="docs")
    store.mset([("a", {"n": 1})]); store.mget(["a"])        # [{"n": 1}]

A LangChain key ``k`` in namespace ``ns`` is the AMS key ``lc/<ns>/:<k>`` (``lc/:<k>`` without a namespace),
with the label and the key encoded as LangGraph's store encodes them (`memory_client.langgraph_keys`), so any
string is a key and ``yield_keys(prefix=...)`` is a key-prefix listing on the server. ``mget`` is one
``POST /v1/records/get`` per thousand keys, ``mset`` and ``mdelete`` one ``POST /v1/batch`` per 500 keys.
Bytes are stored as base64 text. The sync and async methods share one session, so each reads its writes.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Generic, TypeVar

from langchain_core.stores import BaseStore

from memory_client import calls
from memory_client.client import paired_clients
from memory_client.langgraph_keys import decode_part, encode_part
from memory_client.models import Delete, Put

V = TypeVar("V")
ROOT = "lc/"
MAX_KEYS = 1000  # POST /v1/records/get
MAX_BATCH = 500  # AMS_MAX_BATCH_OPERATIONS' default


class _AMSStore(BaseStore[str, V], Generic[V]):
    def __init__(self, base_url: str, token: str, *, namespace: str | None = None, timeout: float = 30.0) -> None:
        self._client, self._aclient = paired_clients(base_url, token, timeout=timeout)
        self._prefix = ROOT + (encode_part(namespace) + "/" if namespace else "") + ":"

    def _encode(self, value: V) -> Any:
        return value

    def _decode(self, stored: Any) -> V:
        result: V = stored
        return result

    def _ams_key(self, key: str) -> str:
        return self._prefix + encode_part(key)

    def _reads(self, keys: Sequence[str]) -> Iterator[calls.Call[list[dict[str, Any] | None]]]:
        for start in range(0, len(keys), MAX_KEYS):
            yield calls.get_records([self._ams_key(key) for key in keys[start:start + MAX_KEYS]])

    def _writes(self, operations: list[Put | Delete]) -> Iterator[calls.Call[Any]]:
        for start in range(0, len(operations), MAX_BATCH):
            yield calls.batch(operations[start:start + MAX_BATCH])

    def _values(self, records: list[dict[str, Any] | None]) -> list[V | None]:
        return [self._decode(record["value"]) if record is not None else None for record in records]

    def _puts(self, pairs: Sequence[tuple[str, V]]) -> list[Put | Delete]:
        return [Put(self._ams_key(key), self._encode(value)) for key, value in pairs]

    def _deletes(self, keys: Sequence[str]) -> list[Put | Delete]:
        return [Delete(self._ams_key(key)) for key in keys]

    def _listing(self, prefix: str | None, cursor: str | None) -> calls.Call[Any]:
        return calls.list_keys(self._prefix + encode_part(prefix or ""), limit=1000, cursor=cursor)

    def mget(self, keys: Sequence[str]) -> list[V | None]:
        return [value for call in self._reads(keys) for value in self._values(self._client.execute(call))]

    async def amget(self, keys: Sequence[str]) -> list[V | None]:
        return [value for call in self._reads(keys) for value in self._values(await self._aclient.execute(call))]

    def mset(self, key_value_pairs: Sequence[tuple[str, V]]) -> None:
        for call in self._writes(self._puts(key_value_pairs)):
            self._client.execute(call)

    async def amset(self, key_value_pairs: Sequence[tuple[str, V]]) -> None:
        for call in self._writes(self._puts(key_value_pairs)):
            await self._aclient.execute(call)

    def mdelete(self, keys: Sequence[str]) -> None:
        for call in self._writes(self._deletes(keys)):
            self._client.execute(call)

    async def amdelete(self, keys: Sequence[str]) -> None:
        for call in self._writes(self._deletes(keys)):
            await self._aclient.execute(call)

    def yield_keys(self, *, prefix: str | None = None) -> Iterator[str]:
        cursor = None
        while True:
            page = self._client.execute(self._listing(prefix, cursor))
            yield from (decode_part(item.key[len(self._prefix):]) for item in page.items)
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def ayield_keys(self, *, prefix: str | None = None) -> AsyncIterator[str]:
        cursor = None
        while True:
            page = await self._aclient.execute(self._listing(prefix, cursor))
            for item in page.items:
                yield decode_part(item.key[len(self._prefix):])
            if page.next_cursor is None:
                return
            cursor = page.next_cursor


class AMSKVStore(_AMSStore[Any]):
    """A LangChain ``BaseStore[str, Any]`` of JSON values in AMS."""


class AMSByteStore(_AMSStore[bytes]):
    """A LangChain ``BaseStore[str, bytes]`` (a ``ByteStore``) in AMS; bytes travel as base64 text."""

    def _encode(self, value: bytes) -> Any:
        return base64.b64encode(value).decode("ascii")

    def _decode(self, stored: Any) -> bytes:
        return base64.b64decode(stored)
