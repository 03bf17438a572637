"""LangGraph's store API, side by side: ``AMSStore`` against LangGraph's ``PostgresStore`` on AMS's own PostgreSQL.

    python -m bench.langgraph_store [--samples 500]

Both stores hold the same 1000 items; each round times one call of each operation on each store, interleaved,
so a burst of load from elsewhere hits both alike: ``put`` (AMSStore's is a strong write: acknowledged once
the hot projection applied it), ``get``, and ``search`` (a namespace prefix and a filter, 10 results).
Needs the running stack (`make run`) and the ``bench`` and ``langgraph`` extras.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from langgraph.store.base import PutOp

from ams.auth import issue_dev_token
from ams.settings import get_settings
from bench.peer import KEYS, NAMESPACE, postgres_store
from memory_client.langgraph import AMSStore

SEARCH_FILTER = {"step": {"$gte": 500}}


def _operations(store: Any) -> dict[str, Callable[[int], object]]:
    return {
        "put": lambda i: store.put(NAMESPACE, f"state:{i % KEYS}", {"step": i, "note": "x" * 64}),
        "get": lambda i: store.get(NAMESPACE, f"state:{i % KEYS}"),
        "search": lambda i: store.search(NAMESPACE[:1], filter=SEARCH_FILTER, limit=10),
    }


def _fill(store: AMSStore) -> None:
    ops = [PutOp(NAMESPACE, f"state:{i}", {"step": i, "note": "x" * 64}) for i in range(KEYS)]
    for start in range(0, len(ops), 250):
        store.batch(ops[start:start + 250])


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=500)
    args = parser.parse_args()
    settings = get_settings()
    ams = AMSStore(f"{settings.gateway_url}/v1", issue_dev_token(settings, f"bench{uuid.uuid4().hex[:8]}",
                                                                  ["memory:read", "memory:write"]))
    _fill(ams)
    with postgres_store(settings) as peer:
        stores = {"AMSStore": _operations(ams), "PostgresStore": _operations(peer)}
        timings: dict[tuple[str, str], list[float]] = {(s, o): [] for s in stores for o in stores[s]}
        for i in range(args.samples + 20):  # the first 20 rounds warm up
            for store_name, operations in stores.items():
                for op_name, operation in operations.items():
                    started = time.perf_counter()
                    operation(i)
                    if i >= 20:
                        timings[(store_name, op_name)].append((time.perf_counter() - started) * 1000)
    print(f"{'operation':<8} {'store':<14} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for (store_name, op_name), samples in sorted(timings.items(), key=lambda entry: (entry[0][1], entry[0][0])):
        print(f"{op_name:<8} {store_name:<14} {statistics.median(samples):8.2f} {_percentile(samples, 0.99):8.2f} "
              f"{statistics.fmean(samples):8.2f}")


if __name__ == "__main__":
    main()
