"""How far a projection has applied the log, per partition, and waiting until it has applied more.

One tracker per projection the gateway reads (Redis, PostgreSQL); each keeps itself current from its
store's announcements and a periodic poll. A read that carries a consistency token waits on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

from ams.tasks import cancel_all

POLL_SECONDS = 0.5
# A tracker that polls only to cover a lost announcement (`next_poll`) waits this long while no reader waits.
IDLE_POLL_SECONDS = 5.0


class PositionTracker:
    def __init__(self) -> None:
        self.applied: dict[int, int] = {}
        # The highest offset ever seen applied per partition: what the store held before it lost data.
        self.high_water: dict[int, int] = {}
        self._changed = asyncio.Event()
        self._waiting = 0  # readers waiting on this tracker now
        self._reader_arrived = asyncio.Event()

    async def next_poll(self) -> None:
        """Wait until the next poll is due: POLL_SECONDS while a reader waits on this tracker, so that a lost
        announcement delays it at most that long, as before; with no reader, IDLE_POLL_SECONDS, or
        POLL_SECONDS after a reader starts waiting, whichever comes first."""
        if not self._waiting:
            self._reader_arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reader_arrived.wait(), IDLE_POLL_SECONDS)
            if not self._waiting:
                return
        await asyncio.sleep(POLL_SECONDS)

    def _set(self, updates: dict[int, int]) -> None:
        changed = False
        for partition, offset in updates.items():
            if self.applied.get(partition) != offset:
                self.applied[partition] = offset
                self.high_water[partition] = max(offset, self.high_water.get(partition, -1))
                changed = True
        if changed:
            self._changed.set()
            self._changed = asyncio.Event()

    def reached(self, positions: dict[int, int]) -> bool:
        return all(self.applied.get(partition, -1) >= offset for partition, offset in positions.items())

    async def wait_applied(self, positions: dict[int, int], timeout: float) -> bool:
        return await first_reached([self], positions, timeout) is not None

    async def _next_change(self) -> None:
        await self._changed.wait()


async def first_reached(
    trackers: Sequence[PositionTracker], positions: dict[int, int], timeout: float
) -> PositionTracker | None:
    """The first of ``trackers`` (in order of preference) to have applied ``positions``, waiting at most
    ``timeout`` seconds; None if none did."""
    deadline = time.monotonic() + timeout
    waiting = False
    try:
        while True:
            for tracker in trackers:
                if tracker.reached(positions):
                    return tracker
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if not waiting:
                waiting = True
                for tracker in trackers:
                    tracker._waiting += 1
                    tracker._reader_arrived.set()
            waits = [asyncio.ensure_future(tracker._next_change()) for tracker in trackers]
            try:
                await asyncio.wait(waits, timeout=min(remaining, POLL_SECONDS), return_when=asyncio.FIRST_COMPLETED)
            finally:
                await cancel_all(waits)
    finally:
        if waiting:
            for tracker in trackers:
                tracker._waiting -= 1
