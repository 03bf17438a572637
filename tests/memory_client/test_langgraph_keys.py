"""The encoding of LangGraph namespaces and keys as AMS keys: reversible, within AMS's grammar, prefix-safe."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from commands.keys import check_key
from memory_client.langgraph_keys import (
    decode_part,
    encode_part,
    item_key,
    namespace_prefix,
    parse_item_key,
    parse_namespace,
)

# What LangGraph allows: a label is a non-empty string without '.', a key any string. Lone surrogates are
# left out: they are not UTF-8, and no JSON body can carry them either.
TEXT = st.characters(exclude_categories=["Cs"])
LABELS = st.text(TEXT.filter(lambda char: char != "."), min_size=1, max_size=12)
NAMESPACES = st.lists(LABELS, min_size=1, max_size=4).map(tuple)
KEYS = st.text(TEXT, max_size=16)


@given(NAMESPACES, KEYS)
def test_any_namespace_and_key_round_trip_through_a_valid_ams_key(namespace: tuple[str, ...], key: str) -> None:
    ams_key = item_key(namespace, key)
    assert check_key(ams_key) == ams_key
    assert parse_item_key(ams_key) == (namespace, key)
    assert parse_namespace(namespace_prefix(namespace)) == namespace


@given(NAMESPACES, NAMESPACES, KEYS)
def test_a_namespace_prefix_covers_exactly_the_namespaces_under_it(prefix: tuple[str, ...],
                                                                   namespace: tuple[str, ...], key: str) -> None:
    under = namespace[:len(prefix)] == prefix
    assert item_key(namespace, key).startswith(namespace_prefix(prefix)) == under


def test_readable_characters_stay_readable_and_the_rest_is_escaped() -> None:
    assert item_key(("users", "alice"), "pref/1") == "lg/users/alice/:pref=2F1"
    assert encode_part("a:b=c ü") == "a=3Ab=3Dc=20=C3=BC"
    assert decode_part("a=3Ab=3Dc=20=C3=BC") == "a:b=c ü"
    assert item_key(("history",), "..") == "lg/history/:.."
