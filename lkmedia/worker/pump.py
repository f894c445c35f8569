"""The worker's side of the start queue (lkmedia.worker.queue): every start request is
stored in Redis in request order and answered at once; each node with room starts the
oldest (first in, first out across the fleet), at most ``max_starting`` at a time so that
a start storm never starves the jobs that are starting. Also: dedup, queue expiry,
the position livekit-server is told, StopEgress for a queued request, leases on running
jobs (a lost worker's job ends FAILED) and adoption of the queued requests of a node
that is gone.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message

from . import codec
from .kind import JobError

if TYPE_CHECKING:
    from .queue import StartQueue
    from .worker import Worker

log = logging.getLogger("lkmedia.worker.pump")

PUMP_EVERY = 0.25  # seconds between looks at the queue (sooner when a job ends)
LEASE_TTL = 15.0  # a running job whose worker has not renewed its lease this long is lost
LEASE_EVERY = 3.0  # seconds between lease renewals (and looks for lost jobs)
STOP_RACE = 10.0  # seconds after taking a queued request during which a relayed stop is looked for
RETRY_WAIT = 3.0  # how long a repeated start waits for the first one's Info


class QueuePump:
    def __init__(self, worker: Worker) -> None:
        assert worker.queue is not None
        self.w = worker
        self.q: StartQueue = worker.queue
        self.kind = worker.kind
        self.queued: set[str] = set()  # requests this node answers for while they wait
        self._positions: dict[str, int] = {}  # the position last reported for each of them
        self._taken: dict[str, float] = {}  # job id -> when this node took it from the queue
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._closing = False
        self._lease_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._untracking: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="start-queue")

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await asyncio.gather(*self._untracking, return_exceptions=True)
        for job_id in list(self.queued):
            self.queued.discard(job_id)
            await self.w.hooks.untrack(job_id)

    def wake(self) -> None:
        self._wake.set()

    def _info(self, raw: bytes | None) -> Message | None:
        if raw is None:
            return None
        info: Message = self.kind.info_type.FromString(raw)
        return info

    # -- a start request ---------------------------------------------------------------------
    async def submit(self, job_id: str, spec: Any, info: Message) -> Message:
        q = self.q
        deadline = time.monotonic() + RETRY_WAIT
        while not await q.claim_id(job_id):  # asked before (a retry), here or on another node
            known = await self._known(job_id)
            if known is not None or time.monotonic() > deadline:
                log.info("%s %s: asked again: answering with its current state", self.kind.name, job_id)
                return known if known is not None else info
            await asyncio.sleep(0.1)  # (the first one may still fail, and give its claim back)
        try:
            pos = await self._enqueue(job_id, spec, info)
            if isinstance(pos, Message):
                return pos  # an earlier request, still running, answers for it
        except BaseException as e:
            log.warning("%s %s: could not be queued (a retry will be): %s", self.kind.name, job_id,
                        e or type(e).__name__)
            # Not queued: a retry of the same request (livekit-server's, after the error or
            # its deadline) must queue it, not answer "asked again" with nothing queued.
            with contextlib.suppress(Exception):
                await q.unclaim_id(job_id)
            raise
        self.queued.add(job_id)
        self._positions[job_id] = pos
        log.info("%s %s queued at position %d", self.kind.name, job_id, pos)
        if not self.w.settings.dispatcher:
            await self.now()  # room here and it is the oldest: it starts now
            sup = self.w.jobs.get(job_id)
            if sup is not None:
                started: Message = sup.info
                return started
        queued: Message = self.kind.queued(info, pos)
        await self._say_position(job_id, queued)
        return queued

    async def _enqueue(self, job_id: str, spec: Any, info: Message) -> int | Message:
        """Dedup, CreateEgress, then the queue: its position, or the Info of an earlier
        request for the same thing that is still running (it answers for this one)."""
        q = self.q
        earlier = await q.dedup(self.kind.dedup_key(spec), job_id)
        if earlier is not None and earlier != job_id:
            known = self._info(await q.load_info(earlier))
            if known is not None and not self.kind.is_final(known):
                log.info("%s %s: the same request as %s within %g s: answering with that one", self.kind.name,
                         job_id, earlier, q.dedup_window)
                return known
            await q.redirect(self.kind.dedup_key(spec), job_id)
        await self.w.hooks.create(info)
        await q.save_info(job_id, info.SerializeToString())
        await self.w.hooks.track(job_id)  # its StopEgress finds a handler before any worker can take it
        return await q.enqueue(job_id, codec.dumps(spec).encode())

    async def _known(self, job_id: str) -> Message | None:
        sup = self.w.jobs.get(job_id)
        if sup is not None:
            current: Message = sup.info
            return current
        return self._info(await self.q.load_info(job_id))

    async def _say_position(self, job_id: str, info: Message) -> None:
        """Still queued after our own look: tell livekit-server (and dedup) the position."""
        if await self.q.save_info_if_queued(job_id, info.SerializeToString()):  # else taken: its worker reports
            await self.w.hooks.relay(info)

    async def end_queued(self, job_id: str, outcome: str, error: str = "", details: str = "") -> Message:
        info = self._info(await self.q.load_info(job_id))
        if info is None:
            raise JobError(f"{self.kind.name} not found", "not_found")
        final: Message = self.kind.ended(info, outcome, error, details)
        await self.q.done(job_id)
        if job_id in self.queued:
            self.queued.discard(job_id)
            # (the caller may be inside this job's own RPC handler: do not wait for it to close)
            task = asyncio.get_running_loop().create_task(self.w.hooks.untrack(job_id))
            self._untracking.add(task)
            task.add_done_callback(self._untracking.discard)
        await self.w.relay(final)
        return final

    async def stop(self, job_id: str) -> Message:
        if await self.q.remove(job_id):
            log.info("%s %s: stopped while queued", self.kind.name, job_id)
            return await self.end_queued(job_id, "aborted", details="stopped while queued")
        sup = self.w.jobs.get(job_id)
        if sup is not None:
            return await sup.stop("StopEgress API")
        # Another node has just taken it: it stops the job when it sees this.
        await self.q.request_stop(job_id)
        info = self._info(await self.q.load_info(job_id))
        if info is None:
            raise JobError(f"{self.kind.name} not found", "not_found")
        return info

    # -- the rounds ----------------------------------------------------------------------------
    async def _run(self) -> None:
        while not self._closing:
            # asyncio.timeout, not wait_for: on 3.11 a cancel that meets wait_for's own
            # timeout comes out as TimeoutError, and this loop would never end.
            try:
                async with asyncio.timeout(PUMP_EVERY):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.now()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis away: the next round tries again
                log.warning("start queue: %s: %s", type(e).__name__, e)

    async def now(self) -> None:
        async with self._lock:  # one round at a time: admission is checked, then reserved
            await self._expire()
            await self._take()
            await self._stops_raced()
            await self._tell_positions()
            await self._leases()
            self.w.metrics.queue_state(await self.q.depth(), await self.q.oldest_wait(),
                                       self.w.admission.available_cpu())

    async def _expire(self) -> None:
        for job_id in await self.q.take_expired():
            log.warning("%s %s: queued longer than %g s: failing it", self.kind.name, job_id, self.q.max_wait)
            await self.end_queued(job_id, "failed", error=f"no {self.kind.name} worker had room for it within "
                                                          f"{self.q.max_wait:g} s (queue.max_wait)")

    def _can_start(self) -> bool:
        w = self.w
        return (not w.draining and not w.settings.dispatcher and w.hooks.healthy
                and w.starting() < w.max_starting())

    async def _take(self) -> None:
        """Start queued requests, oldest first, while this node has room."""
        while self._can_start():
            head = await self.q.head()
            if head is None:
                return
            job_id, raw = head
            try:
                spec = self.kind.decode_spec(json.loads(raw))
            except Exception as e:
                if await self.q.remove(job_id):
                    await self.end_queued(job_id, "failed", error=f"its queued request is unreadable: {e}")
                continue
            costs = self.kind.costs(spec)
            if not self.w.admission.check(costs).accept:
                return  # first in, first out: nobody jumps the head
            if await self.q.claim(job_id) is None:
                continue  # another node took it first
            try:
                info = self._info(await self.q.load_info(job_id))
                if info is None:
                    raise JobError("its Info is gone from Redis")
                self.w.admission.accept(job_id, costs)
                self.w.launch(spec, self.kind.taken(info))
                self._taken[job_id] = time.monotonic()
                log.info("%s %s: started from the queue", self.kind.name, job_id)
            except Exception as e:
                log.error("%s %s: could not start from the queue: %s", self.kind.name, job_id, e)
                await self.end_queued(job_id, "failed", error=f"it could not start: {e}")
            await self.q.done(job_id)
            if job_id in self.queued:  # its RPC topic stays: the running job answers on it now
                self.queued.discard(job_id)

    async def _stops_raced(self) -> None:
        now = time.monotonic()
        for job_id, at in list(self._taken.items()):
            if now - at > STOP_RACE or job_id not in self.w.jobs:
                del self._taken[job_id]
            elif await self.q.take_stop(job_id):
                log.info("%s %s: its stop reached the node that had queued it: stopping", self.kind.name, job_id)
                await self.w.jobs[job_id].stop("StopEgress API")

    async def _tell_positions(self) -> None:
        mine = list(self.queued)  # before the read: one queued meanwhile is not missing from it
        order = await self.q.positions() if mine else {}
        for job_id in mine:
            pos = order.get(job_id)
            if pos is None:
                self.queued.discard(job_id)
                if job_id not in self.w.jobs:
                    await self.w.hooks.untrack(job_id)  # taken by another node, which answers for it now
            elif self._positions.get(job_id) != pos:
                self._positions[job_id] = pos
                info = self._info(await self.q.load_info(job_id))
                if info is not None:
                    await self._say_position(job_id, self.kind.queued(info, pos))
        for job_id in [j for j in self._positions if j not in self.queued]:
            del self._positions[job_id]

    async def _leases(self) -> None:
        now = time.monotonic()
        if now - self._lease_at < LEASE_EVERY:
            return
        self._lease_at = now
        q = self.q
        await q.alive(LEASE_TTL)
        await q.hold(list(self.w.jobs), LEASE_TTL)
        for job_id in await q.take_lost(set(self.w.jobs)):
            await self._end_lost(job_id)
        for job_id in await q.adopt_orphans():
            if job_id not in self.queued and not self.w.draining:
                log.info("%s %s: its queueing node is gone: answering for it here", self.kind.name, job_id)
                self.queued.add(job_id)
                await self.w.hooks.track(job_id)

    async def _end_lost(self, job_id: str) -> None:
        """Its worker stopped renewing the lease (killed, its node gone) and has not come
        back to report it: end it FAILED so that nobody waits on it for ever."""
        info = self._info(await self.q.load_info(job_id))
        if info is None or self.kind.is_final(info):
            return
        log.warning("%s %s: its worker has not been heard of for %g s: failing it", self.kind.name, job_id,
                    LEASE_TTL)
        await self.w.relay(self.kind.ended(
            info, "failed", f"the {self.kind.name} worker was lost (no heartbeat for {LEASE_TTL:g} s); what it "
                            "recorded stays on its volume and is reported when it restarts"))
