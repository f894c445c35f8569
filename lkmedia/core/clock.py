"""A monotonic clock for live sources and deadline-driven mixers."""
from __future__ import annotations

import asyncio
import time


class Clock:
    """Media time in seconds since the clock started (the graph's start)."""

    def __init__(self) -> None:
        self._t0: float | None = None
        self.wall_start: float | None = None

    def start(self) -> None:
        if self._t0 is None:
            self._t0 = time.monotonic()
            self.wall_start = time.time()

    @property
    def started(self) -> bool:
        return self._t0 is not None

    def now(self) -> float:
        if self._t0 is None:
            self.start()
        return time.monotonic() - self._t0  # type: ignore[operator]

    async def sleep_until(self, t: float) -> None:
        delay = t - self.now()
        if delay > 0:
            await asyncio.sleep(delay)
