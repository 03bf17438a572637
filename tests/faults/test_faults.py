"""Jepsen-style fault injection against the real stack: a workload, faults while it runs, then the checker.

The default run (`make test`) makes the tour: each fault once, in an order the seed shuffles, under a
short workload. The scenarios (each fault on its own, and all of them mixed) run when selected:

    .venv/bin/python -m pytest tests/faults -m faults -s                          # tour and every scenario
    AMS_FAULT_SECONDS=600 .venv/bin/python -m pytest tests/faults -m faults -k mixed -s   # 10 minutes, mixed

AMS_FAULT_SEED=<n> replays a run's choices; every failure prints its seed and the command to replay it.
"""

from __future__ import annotations

import pytest
from rich.console import Console

from ams.settings import Settings
from compose.local import LocalStack
from tests.faults.checker import Verdict, print_summary
from tests.faults.conftest import VERDICTS
from tests.faults.faults import scenarios
from tests.faults.runner import run_scenario
from tests.faults.workload import WorkloadConfig

pytestmark = [pytest.mark.faults, pytest.mark.stack]

TOUR_SECONDS = 5.0  # the workload runs at least this long, and until the tour's last fault has healed
SHORT_SECONDS = 6.0
SHORT_MIXED_SECONDS = 12.0
SCENARIOS = [name for name in scenarios(long_run=False) if name != "tour"]
WORKLOAD_RETRY_FOR = WorkloadConfig(seed=0).retry_for


async def run_and_check(stack: LocalStack, settings: Settings, name: str, seconds: float, seed: int) -> None:
    scenario = scenarios(long_run=seconds > 60)[name]
    console = Console(width=180)
    verdict: Verdict = await run_scenario(stack, settings, scenario, seconds, seed, console)
    VERDICTS.append(verdict)
    print_summary([verdict], console)
    assert verdict.faults >= 1, f"no fault was injected in {seconds:g}s; replay: {verdict.replay_command()}"
    assert verdict.acknowledged > 0, f"the workload got no command acknowledged\n{verdict.explain()}"
    assert verdict.hung == 0, f"{verdict.hung} requests got no answer within the client timeout\n{verdict.explain()}"
    assert verdict.indeterminate == 0, (f"{verdict.indeterminate} commands got no answer in {WORKLOAD_RETRY_FOR:g}s "
                                        f"of retries\n{verdict.explain()}")
    assert verdict.ok, verdict.explain()


async def test_a_tour_of_every_fault_loses_duplicates_and_diverges_nothing(
    stack: LocalStack, settings: Settings, fault_seed: int, fault_seconds: float | None
) -> None:
    await run_and_check(stack, settings, "tour", fault_seconds or TOUR_SECONDS, fault_seed)


@pytest.mark.fault_scenarios
@pytest.mark.parametrize("name", SCENARIOS)
async def test_no_acknowledged_command_is_lost_duplicated_or_divergent(
    stack: LocalStack, settings: Settings, name: str, fault_seed: int, fault_seconds: float | None
) -> None:
    seconds = fault_seconds or (SHORT_MIXED_SECONDS if name == "mixed" else SHORT_SECONDS)
    await run_and_check(stack, settings, name, seconds, fault_seed)
