"""`bench.retrieval --json` against the test stack, on a small slice of the WordNet set: it runs and reports
every figure. A smoke test of the benchmark, not a timed test: only sanity bounds are checked."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.wordnet_set import load

pytestmark = pytest.mark.stack


def test_the_wordnet_set_follows_its_rule() -> None:
    labeled = load(50)
    assert len(labeled.memories) == 50
    assert {query.relevant for query in labeled.queries} == set(labeled.memories)
    words = [query for query in labeled.queries if query.kind == "words"]
    assert len(words) == 50 and all(", " in query.text for query in words)  # at least two lemma names


def test_a_small_run_reports_quality_and_latency_of_every_mode() -> None:
    finished = subprocess.run([sys.executable, "-m", "bench.retrieval", "--json", "--memories", "60",
                               "--queries", "10"], capture_output=True, text=True, timeout=540)
    assert finished.returncode == 0, finished.stderr[-3000:]
    report = json.loads(finished.stdout)
    assert set(report["embedders"]) == {"minilm", "minilm-static"}
    assert set(report["api"]) == set(report["raw"]) == {"semantic", "keyword", "hybrid"}
    for mode in report["api"].values():
        assert 0 <= mode["ndcg@10_words"] <= mode["recall@10_words"] <= 1
        assert 0 < mode["api"]["p50_ms"] <= mode["api"]["p99_ms"]
    assert report["api"]["semantic"]["recall@10_words"] > 0.5  # the built-in model finds definitions by meaning
    assert 0 < report["postgres_fts"]["raw"]["p50_ms"] and 0 <= report["postgres_fts"]["recall@10_example"] <= 1
