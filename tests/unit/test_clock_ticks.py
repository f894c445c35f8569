"""lkmedia.core.clock.tick / sleep_until: periodic work on shared instants of the loop's
clock, so that timers of one process (and of several) share a wake-up."""
from __future__ import annotations

import asyncio
import time

from lkmedia.core.clock import sleep_until, tick


async def test_tick_is_the_next_multiple_of_the_period() -> None:
    loop = asyncio.get_running_loop()
    now = loop.time()
    t = tick(0.25)
    assert now <= t < now + 0.25 + 1e-6 and abs(t / 0.25 - round(t / 0.25)) < 1e-9
    later = tick(0.25, after=1.0)
    assert now + 1.0 <= later < now + 1.25 + 1e-6 and abs(later / 0.25 - round(later / 0.25)) < 1e-9
    # (the loop's clock is CLOCK_MONOTONIC: another process computes the same instants)
    assert abs(loop.time() - time.monotonic()) < 0.01


async def test_sleepers_of_one_tick_wake_in_one_turn_of_the_loop() -> None:
    """Three sleepers of the same tick, started at different moments, wake in one turn of
    the loop (each sleeping a period from its own start would wake on its own)."""
    loop = asyncio.get_running_loop()
    woke: list[tuple[float, int]] = []
    turns = [0]

    def turn() -> None:  # counts the loop's turns while the sleepers wait
        turns[0] += 1
        if len(woke) < 3:
            loop.call_soon(turn)

    when = tick(0.1, after=0.05)

    async def sleeper(delay: float) -> None:
        await asyncio.sleep(delay)
        await sleep_until(when)
        woke.append((loop.time(), turns[0]))

    tasks = [asyncio.create_task(sleeper(d)) for d in (0.0, 0.003, 0.011)]
    await asyncio.sleep(0.02)
    loop.call_soon(turn)
    await asyncio.gather(*tasks)
    assert all(t >= when for t, _ in woke)
    assert len({n for _, n in woke}) == 1, woke  # the same turn


async def test_a_cancelled_sleep_leaves_no_timer() -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(sleep_until(loop.time() + 60))
    await asyncio.sleep(0.01)
    before = len(loop._scheduled)  # type: ignore[attr-defined]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert len([h for h in loop._scheduled if not h.cancelled()]) < before  # type: ignore[attr-defined]
