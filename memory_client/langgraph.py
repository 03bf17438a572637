"""LangGraph's long-term memory over AMS: ``AMSStore``, a `langgraph.store.base.BaseStore`.

    store = AMSStore("http://127.0.0.1:8787/v1", token)
    graph = builder.compile(store=store)

Each item is one AMS key (`memory_client.langgraph_keys` gives the reversible encoding) whose value is an
envelope: ``{"store": "langgraph", "ns": {"l0": label, ...}, "value": item value, "ttl": minutes,
"embedding": [...]}`` (``ttl`` and ``embedding`` only when set). A batch costs as few requests as the API
allows: every ``GetOp`` in one ``POST /v1/records/get``, every ``PutOp`` (deletes too) in one ``POST
/v1/batch``, each ``SearchOp`` one ``POST /v1/records/search`` (namespace prefix and filter evaluated by the
server) or, with a ``query``, one ``POST /v1/vector/search`` plus one records read for the hits' times, each
``ListNamespacesOp`` one ``POST /v1/records/prefixes`` per thousand namespaces. As in LangGraph's own stores,
a batch's reads see the state before its writes. Reads carry the store's session token, so it reads its
own writes (vector search included, once the embedder has processed them).

With ``index={"dims": ..., "embed": ..., "fields": [...]}`` the store embeds on the client and AMS's vector
views index the ``embedding`` field. With an index but no ``embed`` (``index={"fields": [...]}``), the store
writes the fields' text into the envelope as ``text`` (``"_index": ["text"]``), AMS's built-in text embedder
embeds it on the server, and a ``query`` goes to the server's text search (``{"text": ..., "mode":
"semantic"}``). Without an index, as in LangGraph's own stores, nothing is embedded and a ``query`` does not
rank (every envelope says ``"_index": false``). Differences from LangGraph's ``InMemoryStore``, all intended, are
listed in docs/ARCHITECTURE.md ("LangGraph's store over AMS").
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from langgraph.store.base import (
    BaseStore,
    GetOp,
    IndexConfig,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
    ensure_embeddings,
    get_text_at_path,
    tokenize_path,
)

from memory_client import calls
from memory_client.calls import Call
from memory_client.client import paired_clients
from memory_client.langgraph_keys import NAMESPACE_END, item_key, namespace_prefix, parse_item_key, parse_namespace
from memory_client.models import Delete, Put

MARK = {"store": "langgraph"}
OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte")
MAX_BATCH = 500  # AMS_MAX_BATCH_OPERATIONS' default
MAX_KEYS = 1000  # POST /v1/records/get


@dataclass(frozen=True, slots=True)
class _Embed:
    """A step of a plan: embed ``texts`` (a query, or documents) with the store's embeddings."""

    texts: list[str]
    query: bool


Step = Call[Any] | _Embed
Plan = Generator[Step, Any, Any]


class AMSStore(BaseStore):
    """A LangGraph ``BaseStore`` whose items live in AMS (see the module's docstring)."""

    supports_ttl = True

    def __init__(self, base_url: str, token: str, *, index: IndexConfig | None = None,
                 ttl: TTLConfig | None = None, timeout: float = 30.0) -> None:
        self._client, self._aclient = paired_clients(base_url, token, timeout=timeout)
        self.index_config = index
        self.ttl_config = ttl
        self.embeddings = ensure_embeddings(index["embed"]) if index and index.get("embed") else None
        self._fields = _paths((index or {}).get("fields") or ["$"])

    def close(self) -> None:
        self._client.close()

    async def aclose(self) -> None:
        await self._aclient.aclose()

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        plan, reply = self._plan(list(ops)), None
        while True:
            try:
                step = plan.send(reply)
            except StopIteration as done:
                return list(done.value)
            if isinstance(step, _Embed):
                assert self.embeddings is not None
                embed = self.embeddings.embed_query if step.query else None
                reply = [embed(step.texts[0])] if embed else self.embeddings.embed_documents(step.texts)
            else:
                reply = self._client.execute(step)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        plan, reply = self._plan(list(ops)), None
        while True:
            try:
                step = plan.send(reply)
            except StopIteration as done:
                return list(done.value)
            if isinstance(step, _Embed):
                assert self.embeddings is not None
                if step.query:
                    reply = [await self.embeddings.aembed_query(step.texts[0])]
                else:
                    reply = await self.embeddings.aembed_documents(step.texts)
            else:
                reply = await self._aclient.execute(step)

    # The plan: every request of a batch, as data, so that `batch` and `abatch` are the same code.

    def _plan(self, ops: list[Op]) -> Plan:
        results: list[Result] = [None] * len(ops)
        refresh: dict[str, dict[str, Any]] = {}  # AMS key -> record whose TTL a read refreshes
        gets = [(i, op) for i, op in enumerate(ops) if isinstance(op, GetOp)]
        for start in range(0, len(gets), MAX_KEYS):
            chunk = gets[start:start + MAX_KEYS]
            records = yield calls.get_records([item_key(op.namespace, op.key) for _, op in chunk])
            for (i, op), record in zip(chunk, records, strict=True):
                results[i] = _item(record, Item) if record is not None else None
                if record is not None and op.refresh_ttl:
                    refresh[record["key"]] = record
        for i, other in enumerate(ops):
            if isinstance(other, SearchOp):
                records, items = yield from self._search(other)
                results[i] = items
                if other.refresh_ttl:
                    refresh.update((record["key"], record) for record in records)
            elif isinstance(other, ListNamespacesOp):
                results[i] = yield from self._list_namespaces(other)
            elif not isinstance(other, GetOp | PutOp):
                raise ValueError(f"Unknown operation type: {type(other)}")
        puts = {(op.namespace, op.key): op for op in ops if isinstance(op, PutOp)}  # the last one wins
        writes = yield from self._writes(list(puts.values()))
        written = {write.key for write in writes}
        writes += [_refreshed(record) for key, record in refresh.items()
                   if key not in written and record["value"].get("ttl") is not None]
        for start in range(0, len(writes), MAX_BATCH):
            yield calls.batch(writes[start:start + MAX_BATCH])
        return results

    def _search(self, op: SearchOp) -> Plan:
        """(the records found, the SearchItems answered)."""
        if op.query and self.index_config is not None:  # without an index, as LangGraph's stores: no ranking
            return (yield from self._semantic_search(op))
        records = yield calls.search_records(namespace_prefix(op.namespace_prefix),
                                             filter={**MARK, **_value_filter(op.filter)},
                                             limit=op.limit, offset=op.offset)
        return records, [_item(record, SearchItem) for record in records]

    def _semantic_search(self, op: SearchOp) -> Plan:
        assert op.query is not None
        conditions = {**MARK, **{f"ns.l{depth}": label for depth, label in enumerate(op.namespace_prefix)},
                      **_value_filter(op.filter)}
        k = op.offset + op.limit
        if self.embeddings is not None:
            [vector] = yield _Embed([op.query], query=True)
            hits = yield calls.vector_search(vector, k, filter=conditions)
        else:  # AMS's server-side text search (issue 18)
            body = {"text": op.query, "k": k, "mode": "semantic", "filter": conditions}
            hits = yield Call("POST", "vector/search", calls.parse_matches, headers={"Content-Type": calls.JSON},
                              content=calls.encode_json(body), read=True)
        hits = hits[op.offset:k]
        if not hits:
            return [], []
        found = yield calls.get_records([hit["key"] for hit in hits])
        pairs = [(record, hit["score"]) for hit, record in zip(hits, found, strict=True) if record is not None]
        return [record for record, _ in pairs], [_item(record, SearchItem, score) for record, score in pairs]

    def _list_namespaces(self, op: ListNamespacesOp) -> Plan:
        namespaces: list[tuple[str, ...]] = []
        after = None
        while True:
            page = yield calls.record_prefixes(namespace_prefix(_fixed_prefix(op.match_conditions)),
                                               NAMESPACE_END, after=after)
            namespaces += [parse_namespace(prefix) for prefix in page["prefixes"] if _is_namespace(prefix)]
            after = page["next_after"]
            if after is None:
                break
        matching = [ns for ns in namespaces if all(_matches(c, ns) for c in op.match_conditions or ())]
        if op.max_depth is not None:
            matching = list({ns[:op.max_depth] for ns in matching})
        return sorted(matching)[op.offset:op.offset + op.limit]

    def _writes(self, puts: list[PutOp]) -> Plan:
        texts = {i: self._texts(op) for i, op in enumerate(puts)}
        texts = {i: text for i, text in texts.items() if text}
        vectors: dict[int, list[float]] = {}
        if texts and self.embeddings is not None:
            embedded = yield _Embed(list(texts.values()), query=False)
            vectors = dict(zip(texts, embedded, strict=True))
        writes: list[Put | Delete] = []
        for i, op in enumerate(puts):
            key = item_key(op.namespace, op.key)
            if op.value is None:
                writes.append(Delete(key))
                continue
            envelope: dict[str, Any] = {**MARK, "ns": {f"l{d}": label for d, label in enumerate(op.namespace)},
                                        "value": op.value}
            if op.ttl is not None:
                envelope["ttl"] = op.ttl
            if i in vectors:
                envelope["embedding"] = [float(x) for x in vectors[i]]
            elif self.embeddings is None:  # AMS embeds the item's text itself (with an index), and nothing else
                index = self.index_config is not None and i in texts
                envelope |= {"text": texts[i], "_index": ["text"]} if index else {"_index": False}
            writes.append(Put(key, envelope, ttl=op.ttl * 60 if op.ttl is not None else None))
        return writes

    def _texts(self, op: PutOp) -> str:
        """What is embedded for the item: its indexed fields' texts, one per line ('' for nothing). Embedded
        here with ``embed``; without it, by AMS's built-in text embedder (the envelope's ``text``)."""
        if op.value is None or op.index is False:
            return ""
        paths = self._fields if op.index is None else _paths(op.index)
        return "\n".join(text for _, tokens in paths for text in get_text_at_path(op.value, tokens))


def _paths(fields: Iterable[str]) -> list[tuple[str, str | list[str]]]:
    """LangGraph's field paths, tokenized as its own stores do (``$``, the whole value, stays as it is)."""
    return [(path, path if path == "$" else tokenize_path(path)) for path in fields]


def _item(record: dict[str, Any], kind: type[Item], score: float | None = None) -> Any:
    namespace, key = parse_item_key(record["key"])
    created = datetime.fromtimestamp(record["created"] / 1000, UTC)
    updated = datetime.fromtimestamp(record["updated"] / 1000, UTC)
    value = record["value"]["value"]
    if kind is SearchItem:
        return SearchItem(namespace, key, value, created, updated, score)
    return Item(value=value, key=key, namespace=namespace, created_at=created, updated_at=updated)


def _refreshed(record: dict[str, Any]) -> Put:
    """The write that restarts a read item's TTL; it loses to any write made since the read."""
    envelope = record["value"]
    return Put(record["key"], envelope, if_version=record["version"], ttl=envelope["ttl"] * 60)


def _value_filter(filter: dict[str, Any] | None, path: str = "value") -> dict[str, Any]:
    """LangGraph's filter as AMS's filter on the envelope's ``value`` (``$gt`` is ``gt``, nesting is dotted)."""
    conditions: dict[str, Any] = {}
    for field, spec in (filter or {}).items():
        where = f"{path}.{field}"
        if isinstance(spec, dict) and any(op.startswith("$") for op in spec):
            unknown = sorted(set(spec) - set(OPERATORS))
            if unknown:
                raise ValueError(f"Unsupported operator: {unknown[0]} (AMSStore takes {', '.join(OPERATORS)})")
            conditions[where] = {op[1:]: operand for op, operand in spec.items()}
        elif isinstance(spec, dict):
            conditions.update(_value_filter(spec, where))
        elif isinstance(spec, list | tuple):
            raise ValueError(f"filter[{field!r}]: AMSStore compares scalars (str, number, bool), not lists")
        else:
            conditions[where] = spec
    return conditions


def _fixed_prefix(conditions: tuple[MatchCondition, ...] | None) -> tuple[str, ...]:
    """The leading labels every listed namespace must have: a prefix condition's, up to its first ``*``."""
    for condition in conditions or ():
        if condition.match_type == "prefix":
            path = tuple(condition.path)
            return path[:path.index("*")] if "*" in path else path
    return ()


def _matches(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    labels = namespace[:len(path)] if condition.match_type == "prefix" else namespace[len(namespace) - len(path):]
    return all(wanted in ("*", label) for wanted, label in zip(path, labels, strict=True))


def _is_namespace(prefix: str) -> bool:
    """Whether ``prefix`` is a namespace's key prefix (a key written under ``lg/`` by other means may not be)."""
    try:
        return bool(parse_namespace(prefix))
    except ValueError:
        return False
