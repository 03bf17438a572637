"""Fault injection for the fault suite (tests/faults), given to projectors by the worker that builds them.

With ``AMS_FAULT_EXIT_AFTER_APPLY=N`` in its environment, a projection worker exits with status 137, as if
SIGKILLed, right after one of its projectors' N-th successful sink apply (each projector counts its own) and
before anything else (the projector's in-memory checkpoint, the Kafka offset commit). The variable is read
once, where the worker is built; unset or 0, projectors get no hook at all.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping

log = logging.getLogger("ams.projector")

EXIT_AFTER_APPLY = "AMS_FAULT_EXIT_AFTER_APPLY"

# Given a projector's label, the hook to call after each of its sink applies (None: no hook).
FaultHook = Callable[[str], Callable[[], None] | None]


def no_fault_hook(label: str) -> None:
    return None


def exit_after_apply_hook(environ: Mapping[str, str] = os.environ) -> FaultHook:
    """The hooks ``AMS_FAULT_EXIT_AFTER_APPLY`` asks for, read now."""
    armed = int(environ.get(EXIT_AFTER_APPLY) or 0)
    if not armed:
        return no_fault_hook

    def hook_for(label: str) -> Callable[[], None]:
        applies = 0

        def after_apply() -> None:
            nonlocal applies
            applies += 1
            if applies == armed:
                log.warning("%s projection: %s=%d: exiting right after this sink apply", label, EXIT_AFTER_APPLY,
                            applies)
                os._exit(137)

        return after_apply

    return hook_for
