"""Serving a Starlette app with uvicorn, quietly: the gateway's processes and the projection workers' health pages."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from functools import partial
from types import FrameType

import uvicorn

TICK_SECONDS = 1.0


class QuietServer(uvicorn.Server):
    """uvicorn's server, without its 10 wake-ups a second when idle.

    uvicorn's main loop sleeps 0.1 s at a time to notice a stop signal, and refreshes its Date header every
    tenth time. This one refreshes the header once a second and is woken at once by the signal instead."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._wake: Callable[[], object] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._wake is not None:
            self._wake()

    async def main_loop(self) -> None:
        stop = asyncio.Event()
        self._wake = partial(asyncio.get_running_loop().call_soon_threadsafe, stop.set)
        while not await self.on_tick(0):  # a counter of 0 makes uvicorn refresh the Date header
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TICK_SECONDS)
