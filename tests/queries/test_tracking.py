"""A position tracker's poll: slow while nobody waits on it, prompt again as soon as a reader waits."""

from __future__ import annotations

import asyncio

import pytest

from queries.tracking import IDLE_POLL_SECONDS, POLL_SECONDS, PositionTracker, first_reached


async def test_with_no_reader_waiting_the_next_poll_is_the_idle_one() -> None:
    tracker = PositionTracker()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(tracker.next_poll(), IDLE_POLL_SECONDS / 2)


async def test_a_reader_that_starts_waiting_brings_the_next_poll_forward() -> None:
    tracker = PositionTracker()
    poll = asyncio.create_task(tracker.next_poll())
    reader = asyncio.create_task(first_reached([tracker], {0: 5}, timeout=IDLE_POLL_SECONDS))
    await asyncio.wait_for(poll, IDLE_POLL_SECONDS / 2)  # due POLL_SECONDS after the reader came
    assert not reader.done()
    tracker._set({0: 5})  # what a poll or an announcement does
    assert await reader is tracker
    assert tracker._waiting == 0  # the reader is gone: the poll is an idle one again
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(tracker.next_poll(), POLL_SECONDS * 2)


async def test_a_reader_whose_position_is_already_applied_does_not_wait() -> None:
    tracker = PositionTracker()
    tracker._set({0: 7})
    assert await first_reached([tracker], {0: 7}, timeout=1) is tracker
    assert tracker._waiting == 0
