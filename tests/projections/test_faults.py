"""The fault suite's hook: read once from the environment, counted per projector, exits 137 when armed."""

from __future__ import annotations

import subprocess
import sys

from projections.faults import EXIT_AFTER_APPLY, exit_after_apply_hook

EXITS_ON_THE_SECOND = f"""
from projections.faults import exit_after_apply_hook
hook = exit_after_apply_hook({{"{EXIT_AFTER_APPLY}": "2"}})
first, other = hook("redis"), hook("redis sandbox")
first(); other(); print("after the first apply of each", flush=True)
first(); print("never printed", flush=True)
"""


def test_unarmed_projectors_get_no_hook() -> None:
    assert exit_after_apply_hook({})("redis") is None
    assert exit_after_apply_hook({EXIT_AFTER_APPLY: "0"})("redis") is None


def test_an_armed_hook_exits_137_right_after_its_own_projectors_nth_apply() -> None:
    run = subprocess.run([sys.executable, "-c", EXITS_ON_THE_SECOND], capture_output=True, text=True, timeout=60)
    assert run.returncode == 137
    assert run.stdout == "after the first apply of each\n"
