"""AMSKVStore, AMSByteStore and AMSVectorStore through langchain-tests' standard suites, unchanged, on the real
stack; plus what the suites do not check: namespaces, awkward keys, metadata filters, and AMS's refusals."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from langchain_tests.integration_tests import BaseStoreAsyncTests, BaseStoreSyncTests, VectorStoreIntegrationTests

from ams.settings import Settings
from memory_client import InvalidRequest
from memory_client.langchain import AMSByteStore, AMSKVStore
from memory_client.langchain_vectors import AMSVectorStore
from tests.conftest import token_for

pytestmark = pytest.mark.stack

JSON_VALUES = ({"n": 1, "tags": ["a"]}, "bar", [1, 2.5, None])
BYTE_VALUES = (b"foo", b"\x00\xffbar", b"")


def _token(settings: Settings) -> str:
    return token_for(settings, f"t{uuid.uuid4().hex[:12]}")  # each store starts empty: a tenant of its own


class TestKVStoreSync(BaseStoreSyncTests[Any]):
    @pytest.fixture
    def kv_store(self, settings: Settings) -> AMSKVStore:
        return AMSKVStore(f"{settings.gateway_url}/v1", _token(settings))

    @pytest.fixture
    def three_values(self) -> tuple[Any, Any, Any]:
        return JSON_VALUES


class TestKVStoreAsync(BaseStoreAsyncTests[Any]):
    @pytest.fixture
    async def kv_store(self, settings: Settings) -> AMSKVStore:
        return AMSKVStore(f"{settings.gateway_url}/v1", _token(settings), namespace="async")

    @pytest.fixture
    def three_values(self) -> tuple[Any, Any, Any]:
        return JSON_VALUES


class TestByteStoreSync(BaseStoreSyncTests[bytes]):
    @pytest.fixture
    def kv_store(self, settings: Settings) -> AMSByteStore:
        return AMSByteStore(f"{settings.gateway_url}/v1", _token(settings), namespace="blobs")

    @pytest.fixture
    def three_values(self) -> tuple[bytes, bytes, bytes]:
        return BYTE_VALUES


class TestByteStoreAsync(BaseStoreAsyncTests[bytes]):
    @pytest.fixture
    async def kv_store(self, settings: Settings) -> AMSByteStore:
        return AMSByteStore(f"{settings.gateway_url}/v1", _token(settings))

    @pytest.fixture
    def three_values(self) -> tuple[bytes, bytes, bytes]:
        return BYTE_VALUES


def test_namespaces_keep_apart_and_any_key_round_trips(settings: Settings) -> None:
    token = _token(settings)
    first, second = (AMSKVStore(f"{settings.gateway_url}/v1", token, namespace=name) for name in ("a", "a/b"))
    keys = ["", "k", "a/b:c", "ключ", " =%", "foo"]
    first.mset([(key, index) for index, key in enumerate(keys)])
    assert first.mget(keys) == list(range(len(keys)))
    assert second.mget(keys) == [None] * len(keys)
    assert sorted(first.yield_keys(prefix="a/")) == ["a/b:c"]
    assert sorted(first.yield_keys()) == sorted(keys)


def test_bad_input_carries_amss_message_and_changes_nothing(settings: Settings) -> None:
    store = AMSKVStore(f"{settings.gateway_url}/v1", _token(settings))
    with pytest.raises(InvalidRequest, match="512 characters"):
        store.mset([("fits", 1), ("k" * 600, 2)])
    assert store.mget(["fits"]) == [None]
    store.mset([("mine", 1)])
    assert AMSKVStore(f"{settings.gateway_url}/v1", _token(settings)).mget(["mine"]) == [None]


class TestVectorStore(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, settings: Settings) -> AMSVectorStore:
        return AMSVectorStore(f"{settings.gateway_url}/v1", _token(settings), embedding=self.get_embeddings(),
                              index="suite")


def test_metadata_filters_and_scores(settings: Settings) -> None:
    store = AMSVectorStore(f"{settings.gateway_url}/v1", _token(settings),
                           embedding=VectorStoreIntegrationTests.get_embeddings())
    store.add_texts(["foo", "bar", "baz"], [{"lang": "en", "n": 1}, {"lang": "fr", "n": 2}, {"lang": "en", "n": 3}],
                    ids=["a", "b", "c"])
    assert [doc.id for doc in store.similarity_search("foo", k=3, filter={"lang": "en"})] == ["a", "c"]
    assert sorted(doc.id or "" for doc in store.similarity_search("foo", k=3, filter={"n": {"gte": 2}})) == ["b", "c"]
    [(best, score)] = store.similarity_search_with_score("bar", k=1)
    assert best.id == "b" and score == pytest.approx(1.0, abs=1e-4)
