"""A monotonic clock for live sources and deadline-driven mixers."""
from __future__ import annotations

import asyncio
import math
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


def tick(period: float, after: float = 0.0, loop: asyncio.AbstractEventLoop | None = None) -> float:
    """The first multiple of ``period`` s of the loop's clock at least ``after`` s from now.

    A process woken from sleep pays for it (on these machines an idle asyncio loop woken
    10 times a second spends ~230 us a wake-up: cold caches and TLB), so periodic work is
    set on shared instants: every timer set to ``tick(p)`` of one loop runs in one wake-up,
    and, the loop's clock being CLOCK_MONOTONIC, processes that do the same wake together
    too. The result is a time of the loop's clock (``loop.call_at``, ``asyncio.timeout_at``,
    ``sleep_until``)."""
    now = (loop or asyncio.get_running_loop()).time()
    return math.ceil((now + after) / period) * period


async def sleep_until(when: float) -> None:
    """Sleep until the loop's clock reaches ``when`` exactly (see ``tick``)."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    handle = loop.call_at(when, _wake, fut)
    try:
        await fut
    finally:
        handle.cancel()


async def sleep_to_tick(period: float) -> float:
    """Sleep until the next ``tick(period)`` at least half a period away; that instant."""
    when = tick(period, period / 2)
    await sleep_until(when)
    return when


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
