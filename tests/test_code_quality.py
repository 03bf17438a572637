"""The tree stays ruff-clean and mypy-clean. CI runs `make test` and nothing else, so the checks live here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def check(*command: str) -> None:
    result = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"`{' '.join(command)}` found problems:\n{result.stdout}{result.stderr}"


def test_ruff_finds_nothing() -> None:
    check("ruff", "check", ".")


def test_mypy_finds_nothing() -> None:
    check("mypy", ".")
