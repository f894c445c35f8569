"""Shared job processes (lkmedia.worker.host) with real child processes: jobs taken from a
HostPool share a process up to its limit, each one driven over its own channel as a job in
a process of its own is; a host that dies ends its jobs alone, each seeing its exit status;
a job ending leaves the others running."""
from __future__ import annotations

import asyncio
import signal

from livekit.protocol import egress as lk

from lkmedia.testing.sleeper import SleepSpec
from lkmedia.worker import codec
from lkmedia.worker.host import HostPool
from lkmedia.worker.messages import Done, Reply, Request, Start, Status, Stop
from lkmedia.worker.process import JobProcess

RUNNER = "lkmedia.testing.sleeper"


async def _start(pool: HostPool, job_id: str, seconds: float = 30, crash: bool = False) -> tuple[JobProcess, int]:
    proc = await pool.take()
    await proc.send(Start(RUNNER, codec.encode(SleepSpec(job_id, seconds, crash)),
                          lk.EgressInfo(egress_id=job_id).SerializeToString()))
    async with asyncio.timeout(20):
        msg = await proc.receive()
    assert isinstance(msg, Status), msg
    info = lk.EgressInfo.FromString(msg.info)
    assert info.status == lk.EGRESS_ACTIVE
    return proc, int(info.details.split()[1])


async def _final(proc: JobProcess) -> lk.EgressInfo | None:
    last = None
    async with asyncio.timeout(20):
        while (msg := await proc.receive()) is not None:
            if isinstance(msg, Status | Done) and msg.info:
                last = lk.EgressInfo.FromString(msg.info)
    return last


async def test_jobs_share_a_host_up_to_the_limit_and_end_alone() -> None:
    pool = HostPool(per_process=3, preload=(RUNNER,))
    pool.start()
    try:
        jobs = [await _start(pool, f"EG_{i}") for i in range(4)]
        pids = [pid for _, pid in jobs]
        assert pids[0] == pids[1] == pids[2] != pids[3], pids
        assert all(p.pid == pid for p, pid in jobs)  # the supervisor's pid is its host's
        await jobs[1][0].send(Request(7, "ping"))
        reply = await jobs[1][0].receive()
        assert isinstance(reply, Reply) and reply.id == 7 and reply.result == {"pid": pids[1], "op": "ping"}
        await jobs[1][0].send(Stop(8, "enough"))
        final = await _final(jobs[1][0])
        assert final is not None and final.status == lk.EGRESS_COMPLETE
        assert await jobs[1][0].wait() == 0 and not jobs[1][0].alive
        assert jobs[0][0].alive and jobs[2][0].alive  # its neighbours run on
        again, pid = await _start(pool, "EG_again")  # its place is free again
        assert pid == pids[0]
        for p in (jobs[0][0], jobs[2][0], jobs[3][0], again):
            await p.send(Stop(9, "end"))
            assert (await _final(p)).status == lk.EGRESS_COMPLETE  # type: ignore[union-attr]
            assert await p.wait() == 0
    finally:
        await pool.close()
    assert not pool.hosts


async def test_a_host_that_dies_ends_its_own_jobs_only() -> None:
    pool = HostPool(per_process=2, preload=(RUNNER,))
    pool.start()
    try:
        a, pid_a = await _start(pool, "EG_a")
        b, pid_b = await _start(pool, "EG_b")
        c, pid_c = await _start(pool, "EG_c")  # the next host
        assert pid_a == pid_b != pid_c
        b.proc.send_signal(signal.SIGKILL)  # (what the supervisor does when a job stops answering)
        for p in (a, b):
            assert await _final(p) is None  # nothing after ACTIVE: no final word, it crashed
            assert await p.wait() == -signal.SIGKILL and not p.alive
        assert c.alive
        d, pid_d = await _start(pool, "EG_d")  # a new host for the next job
        assert pid_d == pid_c  # (the one with room)
        for p in (c, d):
            await p.send(Stop(1, "end"))
            assert (await _final(p)).status == lk.EGRESS_COMPLETE  # type: ignore[union-attr]
    finally:
        await pool.close()


async def test_a_job_that_crashes_its_host_takes_only_that_hosts_jobs() -> None:
    pool = HostPool(per_process=2, preload=(RUNNER,))
    try:
        a, pid_a = await _start(pool, "EG_a")
        b = await pool.take()
        await b.send(Start(RUNNER, codec.encode(SleepSpec("EG_b", 30, crash=True)),
                           lk.EgressInfo(egress_id="EG_b").SerializeToString()))
        await _final(b)
        await _final(a)
        assert await a.wait() == -signal.SIGKILL and await b.wait() == -signal.SIGKILL
        c, pid_c = await _start(pool, "EG_c")
        assert pid_c != pid_a
        await c.send(Stop(1, "end"))
        assert (await _final(c)).status == lk.EGRESS_COMPLETE  # type: ignore[union-attr]
    finally:
        await pool.close()
