"""`bench.langgraph_store` against the test stack: a smoke test (it runs and reports every figure), not a timed one."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.stack


def test_a_short_run_reports_each_operation_of_both_stores() -> None:
    finished = subprocess.run([sys.executable, "-m", "bench.langgraph_store", "--samples", "3"],
                              capture_output=True, text=True, timeout=540)
    assert finished.returncode == 0, finished.stderr
    rows = {tuple(line.split()[:2]) for line in finished.stdout.splitlines()[1:]}
    assert rows == {(operation, store) for operation in ("put", "get", "search")
                    for store in ("AMSStore", "PostgresStore")}
