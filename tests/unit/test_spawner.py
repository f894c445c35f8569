"""The supervisor's spare job process: taken at once, refilled after a delay so that its
imports do not compete with the job that is starting, spawned at once when a second
start comes within that delay. A fake spawn stands in for the process (the real one is
covered by tests/integration/livekit/test_job_processes.py)."""
from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

from lkmedia.worker.process import Spawner


@dataclass
class FakeProcess:
    n: int
    alive: bool = True
    closed: bool = field(default=False)

    async def close(self) -> None:
        self.closed = True


class Spawns:
    def __init__(self) -> None:
        self.made: list[FakeProcess] = []
        self._n = itertools.count(1)

    async def __call__(self) -> FakeProcess:
        await asyncio.sleep(0.01)
        p = FakeProcess(next(self._n))
        self.made.append(p)
        return p


async def test_the_spare_is_taken_and_refilled_after_the_delay() -> None:
    spawns = Spawns()
    sp = Spawner(refill_delay=0.3, spawn=spawns)  # type: ignore[arg-type]
    sp.start()
    await asyncio.sleep(0.05)
    assert len(spawns.made) == 1
    first = await sp.take()
    assert first is spawns.made[0]
    await asyncio.sleep(0.1)
    assert len(spawns.made) == 1  # the refill waits while the job starts
    await asyncio.sleep(0.35)
    assert len(spawns.made) == 2
    second = await sp.take()
    assert second is spawns.made[1]
    await sp.close()


async def test_a_start_within_the_delay_spawns_at_once_and_close_ends_the_spare() -> None:
    spawns = Spawns()
    sp = Spawner(refill_delay=5.0, spawn=spawns)  # type: ignore[arg-type]
    sp.start()
    await sp.take()
    async with asyncio.timeout(1):
        second = await sp.take()  # not after the 5 s delay
    assert second is spawns.made[1]
    await asyncio.sleep(0.05)
    assert len(spawns.made) == 2  # the cancelled refill spawned nothing
    sp.refill_delay = 0
    await sp.take()
    await asyncio.sleep(0.05)
    spare = spawns.made[-1]
    await sp.close()
    assert spare.closed


async def test_a_dead_spare_is_replaced_and_no_spare_means_on_demand() -> None:
    spawns = Spawns()
    sp = Spawner(refill_delay=0, spawn=spawns)  # type: ignore[arg-type]
    sp.start()
    await asyncio.sleep(0.05)
    spawns.made[0].alive = False
    p = await sp.take()
    assert p is spawns.made[1] and p.alive
    await sp.close()
    none = Spawner(spare=False, spawn=spawns)  # type: ignore[arg-type]
    none.start()
    await asyncio.sleep(0.05)
    before = len(spawns.made)
    await none.take()
    await asyncio.sleep(0.05)
    assert len(spawns.made) == before + 1
    await none.close()


async def test_concurrent_starts_schedule_one_refill() -> None:
    spawns = Spawns()
    sp = Spawner(refill_delay=0.1, spawn=spawns)  # type: ignore[arg-type]
    sp.start()
    a, b = await asyncio.gather(sp.take(), sp.take())
    assert a is not b and len(spawns.made) == 2
    await asyncio.sleep(0.3)
    assert len(spawns.made) == 3  # one spare, not one per start
    await sp.close()
    assert spawns.made[-1].closed
