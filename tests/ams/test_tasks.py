"""Background tasks end when cancelled, even those that lose a cancellation."""

from __future__ import annotations

import asyncio

import pytest

from ams.tasks import cancel_all


async def test_a_task_that_swallows_a_cancellation_is_cancelled_again_until_it_ends() -> None:
    swallowed = 0

    async def loses_the_first_cancellation() -> None:  # as aiokafka's stop, or wait_for on Python 3.11, can
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed > 1:
                    raise

    task = asyncio.create_task(loses_the_first_cancellation())
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await cancel_all([task])
    assert task.cancelled() and swallowed == 2


async def test_the_first_error_a_task_ended_with_is_raised_and_done_tasks_are_left_alone() -> None:
    async def fails() -> None:
        raise ValueError("broken")

    failed, finished = asyncio.create_task(fails()), asyncio.create_task(asyncio.sleep(0))
    await asyncio.wait([failed, finished])
    with pytest.raises(ValueError, match="broken"):
        await cancel_all([finished, failed])
    assert not finished.cancelled()
