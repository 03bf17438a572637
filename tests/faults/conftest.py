"""The fault suite's seed and run length, and its summary table at the end of the pytest run."""

from __future__ import annotations

import io
import os
import random

import pytest
from rich.console import Console

from tests.faults.checker import Verdict, print_summary

VERDICTS: list[Verdict] = []


@pytest.fixture(scope="session")
def fault_seed() -> int:
    """AMS_FAULT_SEED replays a run's choices; without it a seed is drawn and printed."""
    raw = os.environ.get("AMS_FAULT_SEED")
    if raw is None:
        return random.SystemRandom().randrange(1, 2**31)
    try:
        return int(raw, 0)
    except ValueError:
        raise pytest.UsageError(f"AMS_FAULT_SEED={raw!r} is not a whole number") from None


def configured_seconds() -> float | None:
    """AMS_FAULT_SECONDS: how long each scenario's workload runs (the short default when unset)."""
    raw = os.environ.get("AMS_FAULT_SECONDS")
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise pytest.UsageError(f"AMS_FAULT_SECONDS={raw!r} is not a number of seconds") from None


@pytest.fixture(scope="session")
def fault_seconds() -> float | None:
    return configured_seconds()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A long run (AMS_FAULT_SECONDS) gets that long plus the usual per-test timeout (pyproject.toml)."""
    seconds = configured_seconds()
    if seconds is not None:
        for item in items:
            if item.get_closest_marker("faults"):
                item.add_marker(pytest.mark.timeout(seconds + 600))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not VERDICTS:
        return
    console = Console(file=io.StringIO(), width=200, force_terminal=False)
    print_summary(VERDICTS, console)
    terminalreporter.write_sep("=", "fault injection summary")
    terminalreporter.write(console.file.getvalue())  # type: ignore[attr-defined]
