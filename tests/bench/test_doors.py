"""`bench.doors` against the test stack: it runs every phase and reports it. A smoke test, not a timed one:
no figure is judged."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.stack


def test_a_short_run_reports_every_phase() -> None:
    finished = subprocess.run([sys.executable, "-m", "bench.doors", "--requests", "20", "--slow", "5"],
                              capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    for phase in ("alone", "5 slow heads", "8 MB heads", "a sandbox being created", "sandbox create took"):
        assert phase in finished.stdout, finished.stdout
