"""Sandbox names: one (owner, name) pair, one set of backend names, never another pair's, each valid for its
backend (ams/namespaces.py)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ams.namespaces import (
    ALL_TENANTS,
    MAX_IDENTIFIER,
    MAX_TOPIC,
    SCHEMA_CHARS,
    TOPIC_CHARS,
    Namespace,
    kafka_collision_form,
    sandbox,
)
from ams.settings import Settings
from projections.postgres_schema import applied_channel

SETTINGS = Settings()
tenants = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,63}", fullmatch=True) | st.just(ALL_TENANTS)
names = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,47}", fullmatch=True)


def backend_names(namespace: Namespace) -> dict[str, str]:
    """Each name as its backend compares names: Kafka's topics with '.' read as '_'."""
    return {"topic": kafka_collision_form(namespace.topic),
            "embeddings": kafka_collision_form(namespace.embeddings_topic), "redis": namespace.redis_prefix,
            "schema": namespace.postgres_schema, "embedder": namespace.embedder_prefix}


def assert_valid(namespace: Namespace) -> None:
    for topic in namespace.topics:
        assert TOPIC_CHARS.fullmatch(topic) and len(topic) <= MAX_TOPIC, topic
    assert SCHEMA_CHARS.fullmatch(namespace.postgres_schema), namespace.postgres_schema
    for identifier in (namespace.postgres_schema, applied_channel(namespace.postgres_schema)):
        assert len(identifier.encode()) <= MAX_IDENTIFIER, identifier


@settings(max_examples=500, deadline=None)
@given(st.tuples(tenants, names), st.tuples(tenants, names))
def test_every_pair_gets_valid_names_of_its_own(first: tuple[str, str], second: tuple[str, str]) -> None:
    one, other = sandbox(SETTINGS, *first), sandbox(SETTINGS, *second)
    assert_valid(one)
    assert_valid(other)
    if first != second:
        mine, theirs = backend_names(one), backend_names(other)
        assert all(mine[backend] != theirs[backend] for backend in mine), (first, second)


def test_a_dash_moved_between_owner_and_name_is_another_schema() -> None:
    assert sandbox(SETTINGS, "a-b", "c").postgres_schema != sandbox(SETTINGS, "a", "b-c").postgres_schema


def test_dot_and_underscore_are_other_topics_to_kafka() -> None:
    """`x_y`/`z` and `x`/`y_z` read alike once Kafka reads '.' as '_' (x_y_z): the hash keeps them apart."""
    one, other = sandbox(SETTINGS, "x_y", "z"), sandbox(SETTINGS, "x", "y_z")
    assert kafka_collision_form(one.topic) != kafka_collision_form(other.topic)


def test_the_longest_owner_and_name_still_fit_every_backend() -> None:
    owner, name = "o" * 64, "n" * 48
    namespace = sandbox(SETTINGS, owner, name)
    assert_valid(namespace)
    assert len(applied_channel(namespace.postgres_schema)) == MAX_IDENTIFIER
    assert namespace.postgres_schema != sandbox(SETTINGS, owner, name[:-1] + "m").postgres_schema
