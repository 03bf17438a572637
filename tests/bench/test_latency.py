"""`bench.latency --quick --json` against the test stack: one JSON document with every figure and target.

A smoke test of the benchmark (it runs, and reports everything), not a timed test: no figure is judged.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.stack

LATENCY = {"strong_put", "eventual_put", "get_after_eventual_put", "batch_10", "raw_kafka_send",
           "raw_kafka_produce_consume", "langgraph_put", "get", "get_with_token", "get_hot_key", "bare_get",
           "raw_redis_hmget", "langgraph_get", "vector_search", "bare_search"}
LOADS = {"bare_get", "get", "strong_put", "eventual_put", "raw_kafka_send"}
TARGETS = ["strong PUT p50", "strong PUT p99", "eventual PUT p50", "GET p50", "GET with token p50",
           "hot-key GET p50", "GET x16 req/s", "eventual PUT x16 req/s", "strong PUT x16 req/s", "idle stack CPU",
           "rebuild events/s"]


def test_a_quick_run_prints_every_figure_and_target_as_json() -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "bench.latency", "--quick", "--json", "--samples", "20", "--idle-seconds", "2",
         "--rebuild-events", "2000"],
        capture_output=True, text=True, timeout=540,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    report = json.loads(finished.stdout)  # standard output is the JSON document and nothing else
    assert set(report["latency"]) == LATENCY
    for figure in report["latency"].values():
        assert figure["samples"] == 20
        assert 0 < figure["p50_ms"] <= figure["p99_ms"] <= figure["p999_ms"]
    assert set(report["throughput"]) == {f"{load}_x{n}" for load in LOADS for n in (16, 64)}
    assert all(run["requests"] > 0 and run["per_second"] > 0 for run in report["throughput"].values())
    processes = set(report["idle_cpu"]["processes"])
    assert "projector-redis" in processes and any(name.startswith("gateway") for name in processes)
    assert report["rebuild"]["events"] == 2000 and report["rebuild"]["building_per_second"] > 0
    assert [target["name"] for target in report["targets"]] == TARGETS
    for target in report["targets"]:
        assert isinstance(target["met"], bool) and isinstance(target["figure"], float)
        assert target["target"] and target["comparison_is"] in ("margin", "factor", "limit")
    assert report["targets_total"] == len(TARGETS)
