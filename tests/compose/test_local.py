"""The local launcher: `ams up` is idempotent and `ams status` tells the truth."""

from __future__ import annotations

import pytest

from compose.local import LocalStack

pytestmark = pytest.mark.stack


def test_a_second_up_reuses_everything_that_runs(stack: LocalStack) -> None:
    assert stack.up(quiet=True) == []


def test_status_shows_every_component_ready(stack: LocalStack) -> None:
    rows = {name: (state, pid) for name, state, pid, _ in stack.status()}
    infrastructure = set() if stack.settings.services_given else {"kafka", "redis", "postgres"}
    expected = {"projector-redis", "projector-postgres", "gateway"} | infrastructure
    assert expected <= set(rows)
    for name in expected:
        assert rows[name][0] == "ready", (name, rows[name])
