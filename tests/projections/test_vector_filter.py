"""Metadata filters: the grammar, the semantics, and the Milvus expressions they become."""

from __future__ import annotations

import pytest

from projections.vector_filter import InvalidFilter, matches_all, milvus_expression, parse_filter


def test_equality_ranges_and_membership() -> None:
    conditions = parse_filter({"kind": "fact", "score": {"gte": 0.5, "lt": 1}, "meta.lang": {"in": ["en", "fr"]}})
    assert matches_all(conditions, "k", {"kind": "fact", "score": 0.5, "meta": {"lang": "fr"}})
    assert not matches_all(conditions, "k", {"kind": "fact", "score": 1, "meta": {"lang": "fr"}})
    assert not matches_all(conditions, "k", {"kind": "note", "score": 0.7, "meta": {"lang": "en"}})
    assert not matches_all(conditions, "k", {"kind": "fact", "score": 0.7})  # a missing field never matches


def test_types_are_not_coerced() -> None:
    assert not matches_all(parse_filter({"flag": 1}), "k", {"flag": True})
    assert not matches_all(parse_filter({"flag": True}), "k", {"flag": 1})
    assert not matches_all(parse_filter({"n": "1"}), "k", {"n": 1})
    assert not matches_all(parse_filter({"n": {"gt": 0}}), "k", {"n": "5"})
    assert matches_all(parse_filter({"n": 2}), "k", {"n": 2.0})
    assert matches_all(parse_filter({"n": {"ne": 2}}), "k", {"n": 3})


@pytest.mark.parametrize("raw", [
    [], "kind == 'x'", {"": 1}, {"a b": 1}, {"value\"] or true or [\"": 1}, {"a..b": 1}, {"a": {}},
    {"a": {"like": "x"}}, {"a": {"gte": "x"}}, {"a": {"in": []}}, {"a": {"in": "x"}}, {"a": [1]}, {"a": None},
    {"a": {"eq": {"nested": 1}}}, {"a": "line\nbreak"}, {f"f{i}": i for i in range(17)},
])
def test_outside_the_grammar_is_refused(raw: object) -> None:
    with pytest.raises(InvalidFilter):
        parse_filter(raw)


def test_milvus_expressions_quote_every_operand() -> None:
    hostile = 'x" or deleted == true or key != "'
    expression = milvus_expression(parse_filter({"kind": hostile, "score": {"gte": 0.5}, "tag": {"in": ["a", "b\\"]},
                                                 "ok": False}))
    assert expression == ('(value["kind"] == "x\\" or deleted == true or key != \\"") and '
                          '(value["score"] >= 0.5) and (value["tag"] == "a" or value["tag"] == "b\\\\") and '
                          '(value["ok"] == false)')


def test_dollar_operators_are_the_same_operators() -> None:
    conditions = parse_filter({"score": {"$gte": 0.5, "$lt": 1}, "kind": {"$in": ["fact"]}, "lang": {"$ne": "de"}})
    assert matches_all(conditions, "k", {"score": 0.5, "kind": "fact", "lang": "en"})
    assert not matches_all(conditions, "k", {"score": 0.5, "kind": "fact", "lang": "de"})
    assert parse_filter({"n": {"$eq": 2}}) == parse_filter({"n": {"eq": 2}})


def test_key_prefix_matches_the_key_not_the_value() -> None:
    conditions = parse_filter({"$key_prefix": "notes/", "kind": "fact"})
    assert matches_all(conditions, "notes/1", {"kind": "fact"})
    assert not matches_all(conditions, "todo/notes/1", {"kind": "fact", "$key": "notes/"})
    with pytest.raises(InvalidFilter, match="FAISS"):
        milvus_expression(conditions)


@pytest.mark.parametrize("raw", [{"a": {"$like": "x"}}, {"$key_prefix": ""}, {"$key_prefix": 3}, {"$where": 1}])
def test_unknown_dollar_forms_are_refused(raw: object) -> None:
    with pytest.raises(InvalidFilter):
        parse_filter(raw)
