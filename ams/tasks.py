"""Ending background tasks for sure.

A cancellation can be lost on Python 3.11: ``asyncio.wait_for`` returns the awaited result when it was
ready at the moment of the cancel (fixed in 3.12), and libraries (aiokafka) await their own cancelled tasks
under ``suppress(CancelledError)``, which also swallows a cancellation of the caller. A task that lost one
carries on, and whoever awaits its end waits for ever: a sandbox's projection went on reading its deleted
topic, and the worker never projected another sandbox. `cancel_all` cancels again until the tasks end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

RECANCEL_SECONDS = 0.5


async def cancel_all(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel the tasks and wait until they have ended; raise the first error one of them ended with.

    A cancellation of the caller meanwhile is raised in the caller (the tasks are cancelled already)."""
    tasks = list(tasks)
    pending = [task for task in tasks if not task.done()]
    while pending:
        for task in pending:
            task.cancel()
        _, still = await asyncio.wait(pending, timeout=RECANCEL_SECONDS)
        pending = list(still)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
