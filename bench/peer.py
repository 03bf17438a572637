"""The peer an agent builder would pick instead: LangGraph's ``PostgresStore`` on AMS's own PostgreSQL.

It runs in a schema of its own (``search_path``), made for the run and dropped afterwards, so it never
touches AMS's tables; one connection, autocommit, as ``PostgresStore.from_conn_string`` makes it.
Needs the ``bench`` extra (``pip install -e '.[bench]'``; `make bench` installs it).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ams.settings import Settings

NAMESPACE = ("bench", "agent")
KEYS = 1000  # the keys an agent's state cycles through, as for AMS in bench.latency


@contextmanager
def postgres_store(settings: Settings) -> Iterator[Any]:
    """A set-up ``PostgresStore`` in a new schema of AMS's database; the schema is dropped when the block ends."""
    try:
        import psycopg
        from langgraph.store.postgres import PostgresStore
    except ImportError as error:
        raise SystemExit(f"the benchmark's peer needs the bench extra ({error}): "
                         "run `make bench`, or pip install -e '.[bench]'") from None
    schema = f"bench_langgraph_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            conninfo = psycopg.conninfo.make_conninfo(settings.postgres_dsn, options=f"-c search_path={schema}")
            with PostgresStore.from_conn_string(conninfo) as store:
                store.setup()
                for index in range(KEYS):
                    put(store, index)
                yield store
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def put(store: Any, index: int) -> None:
    store.put(NAMESPACE, f"state:{index % KEYS}", {"step": index, "note": "x" * 64})


def get(store: Any, index: int) -> None:
    if store.get(NAMESPACE, f"state:{index % KEYS}") is None:
        raise RuntimeError("the peer lost a value it was given")
