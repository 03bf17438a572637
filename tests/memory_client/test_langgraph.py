"""AMSStore against LangGraph's own InMemoryStore: the same operations, the same answers, on the real stack.

Compared as LangGraph users see them: namespaces, keys, values, scores, namespace listings. The intended
differences (docs/ARCHITECTURE.md, "LangGraph's store over AMS") are kept out of the generated operations or
normalised here, each where it applies:

- order: InMemoryStore answers a search without ``query`` in insertion order, AMSStore in key order (the
  encoded AMS key), so the InMemoryStore's answer is sorted the same way before its page is cut;
- timestamps: InMemoryStore resets ``created_at`` on every put, AMS keeps a key's creation time;
- filters: values always carry every filtered field, with numbers for ranges (InMemoryStore's ``$ne`` on a
  missing field matches and its ranges take numeric strings; AMS's never do);
- semantic search: one vector per item (its indexed texts joined), so items are indexed on one field here.
"""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from langgraph.graph import END, START, StateGraph
from langgraph.store.base import (
    BaseStore,
    GetOp,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    SearchOp,
)
from langgraph.store.memory import InMemoryStore

from ams.settings import Settings
from memory_client import InvalidRequest
from memory_client.langgraph import AMSStore
from memory_client.langgraph_keys import item_key
from tests.conftest import token_for

pytestmark = pytest.mark.stack

LABELS = ["a", "b", "a b", "ü", "x/y", "k:z", "=", "history", "-"]
KEYS = ["k", "k/1", "ключ", "a:b", "=3D", "..", "history", " ", ""]
TAGS = ["red", "blue", "Red"]
NAMESPACES = st.lists(st.sampled_from(LABELS), min_size=1, max_size=3).map(tuple)
VALUES = st.fixed_dictionaries({
    "n": st.integers(-5, 5), "tag": st.sampled_from(TAGS),
    "meta": st.fixed_dictionaries({"tag": st.sampled_from(TAGS)}),
})
NUMERIC = st.sampled_from(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte"])
FILTERS = st.one_of(
    st.none(),
    st.fixed_dictionaries({"n": st.one_of(st.integers(-5, 5), st.dictionaries(NUMERIC, st.integers(-5, 5),
                                                                                min_size=1, max_size=2))}),
    st.fixed_dictionaries({"tag": st.sampled_from(TAGS)}),
    st.fixed_dictionaries({"meta": st.fixed_dictionaries({"tag": st.sampled_from(TAGS)})}),
    st.fixed_dictionaries({"tag": st.fixed_dictionaries({"$ne": st.sampled_from(TAGS)}),
                           "n": st.fixed_dictionaries({"$gte": st.integers(-5, 5)})}),
)
PATTERNS = st.lists(st.sampled_from([*LABELS[:3], "*"]), min_size=1, max_size=2).map(tuple)


@st.composite
def operations(draw: st.DrawFn) -> Op:
    namespace, key = draw(NAMESPACES), draw(st.sampled_from(KEYS))
    kind = draw(st.sampled_from(["put", "put", "put", "delete", "get", "search", "list"]))
    if kind == "put":
        return PutOp(namespace, key, draw(VALUES))
    if kind == "delete":
        return PutOp(namespace, key, None)
    if kind == "get":
        return GetOp(namespace, key)
    if kind == "search":
        return SearchOp(namespace[:draw(st.integers(0, len(namespace)))], draw(FILTERS),
                        limit=draw(st.integers(1, 6)), offset=draw(st.integers(0, 3)))
    conditions = [MatchCondition(kind, draw(PATTERNS)) for kind in ("prefix", "suffix") if draw(st.booleans())]
    return ListNamespacesOp(tuple(conditions) or None, max_depth=draw(st.none() | st.integers(1, 3)),
                            limit=draw(st.integers(1, 8)), offset=draw(st.integers(0, 2)))


def _comparable(result: Any) -> Any:
    if isinstance(result, Item):
        assert result.created_at <= result.updated_at
        return (tuple(result.namespace), result.key, result.value)
    if isinstance(result, list):
        return [_comparable(entry) for entry in result]
    return result


def _expected(reference: InMemoryStore, ops: list[Op]) -> list[Any]:
    """InMemoryStore's answers, each search's page cut from its whole answer in AMS's key order, and namespace
    listings of the namespaces that hold items (InMemoryStore also lists those that were only read, or
    whose items were all deleted)."""
    for empty in [namespace for namespace, items in reference._data.items() if not items]:
        del reference._data[empty]
    listings = iter(reference.batch([op for op in ops if isinstance(op, ListNamespacesOp)]))
    whole = [SearchOp(op.namespace_prefix, op.filter, limit=10**6) if isinstance(op, SearchOp) else op for op in ops]
    answers: list[Any] = [next(listings) if isinstance(op, ListNamespacesOp) else answer
                          for op, answer in zip(ops, reference.batch(whole), strict=True)]
    for i, op in enumerate(ops):
        if isinstance(op, SearchOp):
            ordered = sorted(answers[i], key=lambda item: item_key(tuple(item.namespace), item.key))
            answers[i] = ordered[op.offset:op.offset + op.limit]
    return _comparable(answers)


def _store(settings: Settings, **options: Any) -> AMSStore:
    return AMSStore(f"{settings.gateway_url}/v1", token_for(settings, f"t{uuid.uuid4().hex[:12]}"), **options)


@hypothesis_settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(operations(), min_size=1, max_size=8), min_size=1, max_size=4))
def test_the_same_batches_give_the_same_answers_as_the_in_memory_store(settings: Settings,
                                                                       batches: list[list[Op]]) -> None:
    store, reference = _store(settings), InMemoryStore()
    for ops in batches:
        assert _comparable(store.batch(ops)) == _expected(reference, ops), ops
    everything: list[Op] = [SearchOp((), limit=1000), ListNamespacesOp(None, limit=1000)]
    assert _comparable(store.batch(everything)) == _expected(reference, everything)


@pytest.mark.parametrize("namespace", [("a",), ("a", "b c", "ü/:=%"), ("history", "x" * 100)])
async def test_async_twins_answer_as_the_sync_ones(settings: Settings, namespace: tuple[str, ...]) -> None:
    store = _store(settings)
    await store.aput(namespace, "k", {"n": 1})
    assert (await store.aget(namespace, "k")).value == {"n": 1}  # type: ignore[union-attr]
    assert [item.key for item in await store.asearch(namespace[:1], filter={"n": {"$gt": 0}})] == ["k"]
    assert await store.alist_namespaces(prefix=namespace[:1]) == [namespace]
    assert store.get(namespace, "k") is not None  # the sync side shares the session
    await store.adelete(namespace, "k")
    assert await store.aget(namespace, "k") is None
    await store.aclose()


def _embed(texts: list[str]) -> list[list[float]]:
    """A deterministic bag-of-words embedding in 8 dimensions."""
    vectors = []
    for text in texts:
        vector = [0.0] * 8
        for word in text.lower().split():
            vector[hashlib.sha256(word.encode()).digest()[0] % 8] += 1.0
        vectors.append(vector if any(vector) else [1.0] + [0.0] * 7)
    return vectors


TEXTS = ["cats purr", "dogs bark loudly", "cats and dogs", "the sea is blue", "blue cats", "bark at the sea"]


def test_semantic_search_ranks_and_scores_as_the_in_memory_store(settings: Settings) -> None:
    index: Any = {"dims": 8, "embed": _embed, "fields": ["text"]}
    store, reference = _store(settings, index=index), InMemoryStore(index=index)
    for i, text in enumerate(TEXTS):
        for target in (store, reference):
            target.put(("docs", "even" if i % 2 == 0 else "odd"), f"d{i}", {"text": text, "n": i})
    for query, prefix, filter in [("cats", ("docs",), None), ("blue sea", ("docs", "even"), None),
                                  ("dogs bark", ("docs",), {"n": {"$gte": 2}})]:
        got = store.search(prefix, query=query, filter=filter, limit=10)
        want = {item.key: item for item in reference.search(prefix, query=query, filter=filter, limit=10)}
        assert sorted(item.key for item in got) == sorted(want)
        for item in got:
            assert item.value == want[item.key].value
            assert math.isclose(item.score or 0, want[item.key].score or 0, abs_tol=1e-4)
        scores = [item.score or 0 for item in got]
        assert scores == sorted(scores, reverse=True)
    paged = store.search(("docs",), query="cats", limit=2, offset=1)
    ranked = [item.score or 0 for item in reference.search(("docs",), query="cats")]
    assert [item.score or 0 for item in paged] == pytest.approx(ranked[1:3], abs=1e-4)


def test_without_embed_the_server_embeds_the_indexed_fields_and_a_query_finds_by_meaning(settings: Settings) -> None:
    """No ``embed``: AMS's built-in text embedder does the work, and a paraphrase sharing no word finds its item."""
    store = _store(settings, index={"fields": ["note.body"]})
    notes = {"hike": "We walked up the mountain trail and camped beside the lake",
             "stocks": "Shares of the bank dropped sharply after the quarterly report",
             "cake": "Bake the sponge for forty minutes, then let it cool"}
    for key, body in notes.items():
        store.put(("notes", "u1"), key, {"note": {"body": body}, "kind": "diary" if key == "hike" else "other"})
    store.put(("notes", "u2"), "hike", {"note": {"body": notes["hike"]}, "kind": "diary"})
    found = store.search(("notes", "u1"), query="an outdoor trekking trip in the hills", limit=3)
    assert found and found[0].key == "hike"
    assert all(item.namespace == ("notes", "u1") for item in found)  # the namespace prefix holds on the server
    assert [item.score or 0 for item in found] == sorted((item.score or 0 for item in found), reverse=True)
    filtered = store.search(("notes",), query="money and the stock market", filter={"kind": "other"}, limit=5)
    assert filtered and filtered[0].key == "stocks"
    assert {item.key for item in filtered} <= {"stocks", "cake"}
    store.put(("notes", "u1"), "plain", {"note": {"body": "a mountain hike"}}, index=False)
    assert "plain" not in {item.key for item in store.search(("notes", "u1"), query="mountain hike", limit=10)}


def test_without_an_index_a_query_does_not_rank_as_in_langgraphs_stores(settings: Settings) -> None:
    store, reference = _store(settings), InMemoryStore()
    for target in (store, reference):
        target.put(("docs",), "a", {"text": "cats purr"})
        target.put(("docs",), "b", {"text": "dogs bark"})
    got = store.search(("docs",), query="dogs")
    want = reference.search(("docs",), query="dogs")
    assert [(item.key, item.score) for item in got] == [(item.key, item.score) for item in want]


def _sleep_until(moment: datetime) -> None:
    time.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()))


def test_ttl_expires_items_and_reads_refresh_it(settings: Settings) -> None:
    """Timed from the items' own write times: a strong write may take seconds on a loaded machine."""
    store = _store(settings, ttl={"refresh_on_read": True})
    assert store.supports_ttl
    store.put(("t",), "refreshed", {"n": 1}, ttl=0.25)  # 15 s
    store.put(("t",), "left", {"n": 2}, ttl=0.25)
    written = store.get(("t",), "left", refresh_ttl=False)
    assert written is not None
    _sleep_until(written.updated_at + timedelta(seconds=10))
    assert store.get(("t",), "refreshed") is not None  # restarts its 15 s
    _sleep_until(written.updated_at + timedelta(seconds=17))
    assert store.get(("t",), "left") is None
    assert [item.key for item in store.search(("t",))] == ["refreshed"]


def test_bad_input_gets_the_frameworks_error_or_amss_message_and_changes_nothing(settings: Settings) -> None:
    store = _store(settings)
    with pytest.raises(InvalidNamespaceError):
        store.put(("a.b",), "k", {"n": 1})
    with pytest.raises(InvalidRequest, match="512 characters"):
        store.batch([PutOp(("a",), "fits", {"n": 1}), PutOp(("a",), "k" * 600, {"n": 1})])
    assert store.get(("a",), "fits") is None  # the batch was refused whole
    with pytest.raises(InvalidRequest, match="filter field"):
        store.search(("a",), filter={"not a field": 1})
    with pytest.raises(ValueError, match="Unsupported operator"):
        store.search(("a",), filter={"n": {"$in": [1]}})
    store.put(("a",), "mine", {"n": 1})
    intruder = _store(settings)
    assert intruder.get(("a",), "mine") is None
    assert intruder.search(("a",)) == [] and intruder.list_namespaces() == []


class Conversation(TypedDict, total=False):
    user: str
    said: str
    recalled: list[str]


def _remember(state: Conversation, *, store: BaseStore) -> Conversation:
    store.put(("memories", state["user"]), uuid.uuid4().hex, {"fact": state["said"]})
    return {}


def _recall(state: Conversation, *, store: BaseStore) -> Conversation:
    return {"recalled": sorted(item.value["fact"] for item in store.search(("memories", state["user"])))}


async def test_a_state_graph_remembers_and_recalls_through_the_store(settings: Settings) -> None:
    builder = StateGraph(Conversation)
    builder.add_node("remember", _remember)
    builder.add_node("recall", _recall)
    builder.add_edge(START, "remember")
    builder.add_edge("remember", "recall")
    builder.add_edge("recall", END)
    graph = builder.compile(store=_store(settings))
    assert graph.invoke({"user": "ana", "said": "likes tea"})["recalled"] == ["likes tea"]
    assert (await graph.ainvoke({"user": "ana", "said": "lives in Porto"}))["recalled"] == [
        "likes tea", "lives in Porto"]
    assert graph.invoke({"user": "bo", "said": "x"})["recalled"] == ["x"]
