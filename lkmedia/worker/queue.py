"""The durable start queue and dedup: no start request is lost when the fleet is full.

The Go egress answers a full fleet with "no response from servers". With the queue on,
every StartEgress goes through it: the first worker to claim it (affinity 1, which
livekit-server takes at once) stores it in Redis, in the order requests come; if it has
room and the request is the oldest, it starts it before answering, else it answers with
EgressInfo STARTING, details "queued, position N". Every worker with room starts the
oldest queued request (first in, first out across the fleet). ``lkmedia dispatcher`` (no
media) claims with QUEUE_AFFINITY, so it only wins when no worker runs. A request queued
longer than ``queue.max_wait`` ends FAILED saying so; StopEgress on a queued egress
removes it (ABORTED). With ``queue.enabled: false`` a worker claims as the Go egress does.

Dedup: a start with the same request type and the same request bytes (room, outputs,
options) as one made within ``queue.dedup_window`` returns that egress instead of a
second one, while it has not ended.

Redis keys (``lkmedia:<kind>:`` prefix, ``lkmedia:egress:`` for egress; persistence as
configured for Redis, see docs/deployment.md):
  queue           LIST of queued egress ids, oldest first
  req:<id>        HASH request (psrpc StartEgressRequest bytes), at (unix s), owner (node id:
                  it answers StopEgress while the request waits; node:<id> says it is up,
                  and another node adopts the requests of an owner that is gone)
  info:<id>       STRING the latest EgressInfo (for dedup answers and queue expiry), 1 day
  id:<id>         STRING set when a job id is first submitted (a repeated start is the same job)
  dedup:<sha256>  STRING egress id, expires after the window
  stop:<id>       STRING set when a StopEgress reached the node that queued a request
                  another node had just taken: that node stops the job when it sees it
  running         SET of egress ids being recorded; lease:<id> STRING node id, renewed
                  every few seconds by the worker. A lease that expires (the worker was
                  killed and did not come back) lets one node (reaped:<id>) end the egress
                  FAILED, saying its partial output stays on that worker's volume.
"""
from __future__ import annotations

import time
from typing import Any

QUEUE_AFFINITY = 0.01  # > 0 (0 never wins a psrpc selection); below any worker with room (0.5 / 1)
INFO_TTL = 86_400

# Take the oldest entry if it is ``eid`` (so that a node never skips the head it checked):
# LPOP only if the head matches. Returns the request bytes or nil.
_CLAIM = """
local head = redis.call('LINDEX', KEYS[1], 0)
if head ~= ARGV[1] then return false end
redis.call('LPOP', KEYS[1])
return redis.call('HGET', KEYS[2], 'req')
"""

# Save a queued egress's info only while it is still queued: a position update must never
# overwrite the status of the worker that has just taken it.
_SAVE_QUEUED = """
if not redis.call('LPOS', KEYS[1], ARGV[1]) then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
return 1
"""


class StartQueue:
    def __init__(self, redis: Any, node_id: str, *, prefix: str = "lkmedia:egress:", max_wait: float = 600.0,
                 dedup_window: float = 30.0) -> None:
        self.r = redis
        self.prefix = prefix
        self.queue_key, self.running_key = prefix + "queue", prefix + "running"
        self.node_id = node_id
        self.max_wait = max_wait
        self.dedup_window = dedup_window
        self._dedup_ms = max(1, int(dedup_window * 1000))
        self._claim = redis.register_script(_CLAIM)
        self._save_queued = redis.register_script(_SAVE_QUEUED)

    # -- queue -----------------------------------------------------------------------------
    async def enqueue(self, job_id: str, request: bytes) -> int:
        """Store and queue a request; its 1-based position."""
        async with self.r.pipeline(transaction=True) as p:
            p.hset(self._req(job_id), mapping={"req": request, "at": repr(time.time()), "owner": self.node_id})
            p.rpush(self.queue_key, job_id)
            _, n = await p.execute()
        return int(n)

    async def positions(self) -> dict[str, int]:
        """Every queued egress id and its 1-based position."""
        return {eid.decode(): i + 1 for i, eid in enumerate(await self.r.lrange(self.queue_key, 0, -1))}

    async def head(self) -> tuple[str, bytes] | None:
        """The oldest queued request, without taking it."""
        while True:
            eid = await self.r.lindex(self.queue_key, 0)
            if eid is None:
                return None
            raw = await self.r.hget(self._req(eid.decode()), "req")
            if raw is not None:
                return eid.decode(), raw
            await self.r.lrem(self.queue_key, 1, eid)  # its record is gone: drop the stray id

    async def claim(self, job_id: str) -> bytes | None:
        """Take ``job_id`` if it is still the oldest; its request bytes, or None."""
        raw: bytes | None = await self._claim(keys=[self.queue_key, self._req(job_id)], args=[job_id])
        return raw

    async def remove(self, job_id: str) -> bool:
        """Take a queued request out (StopEgress); False if it was no longer queued."""
        return bool(await self.r.lrem(self.queue_key, 1, job_id))

    async def done(self, job_id: str) -> None:
        """The request has started or ended: forget its record."""
        await self.r.delete(self._req(job_id))

    async def depth(self) -> int:
        return int(await self.r.llen(self.queue_key))

    async def oldest_wait(self) -> float:
        head = await self.r.lindex(self.queue_key, 0)
        if head is None:
            return 0.0
        at = await self.r.hget(self._req(head.decode()), "at")
        return max(0.0, time.time() - float(at)) if at else 0.0

    async def take_expired(self) -> list[str]:
        """Queued longer than max_wait: taken out of the queue (oldest first)."""
        if self.max_wait <= 0:
            return []
        out = []
        now = time.time()
        for eid in await self.r.lrange(self.queue_key, 0, 49):
            at = await self.r.hget(self._req(eid.decode()), "at")
            if at is None or now - float(at) < self.max_wait:
                break
            if await self.r.lrem(self.queue_key, 1, eid):
                out.append(eid.decode())
        return out

    async def alive(self, ttl: float) -> None:
        """This node is up (its queued requests have someone to answer StopEgress)."""
        await self.r.set(self.prefix + "node:" + self.node_id, "1", px=int(ttl * 1000))

    async def adopt_orphans(self) -> list[str]:
        """Queued requests whose owner node is gone: this node takes them over (one node
        each), so that a StopEgress for them still finds a handler."""
        out = []
        for raw in await self.r.lrange(self.queue_key, 0, -1):
            eid = raw.decode()
            owner = await self.owner(eid)
            if owner is None or owner == self.node_id or await self.r.exists(self.prefix + "node:" + owner):
                continue
            if await self.r.set(self.prefix + "adopt:" + eid + ":" + owner, self.node_id, nx=True, ex=INFO_TTL):
                await self.r.hset(self._req(eid), "owner", self.node_id)
                out.append(eid)
        return out

    async def owner(self, job_id: str) -> str | None:
        v = await self.r.hget(self._req(job_id), "owner")
        return v.decode() if v is not None else None

    async def claim_id(self, job_id: str) -> bool:
        """True the first time a job id is submitted to the fleet; False when it was
        submitted before (a caller retrying a start it timed out on)."""
        return bool(await self.r.set(self.prefix + "id:" + job_id, self.node_id, nx=True, ex=INFO_TTL))

    async def unclaim_id(self, job_id: str) -> None:
        """Give back a claim whose request was never queued (its submit failed)."""
        await self.r.delete(self.prefix + "id:" + job_id)

    # -- dedup -----------------------------------------------------------------------------
    async def dedup(self, key: str, job_id: str) -> str | None:
        """Record ``job_id`` for ``key``; the id of an earlier one within the window, or None."""
        if self.dedup_window <= 0:
            return None
        if await self.r.set(self.prefix + "dedup:" + key, job_id, nx=True, px=self._dedup_ms):
            return None
        old = await self.r.get(self.prefix + "dedup:" + key)
        return old.decode() if old is not None else None

    async def redirect(self, key: str, job_id: str) -> None:
        """The earlier egress has ended: ``job_id`` takes the key over."""
        if self.dedup_window > 0:
            await self.r.set(self.prefix + "dedup:" + key, job_id, px=self._dedup_ms)

    # -- EgressInfo --------------------------------------------------------------------------
    async def save_info(self, job_id: str, info: bytes) -> None:
        await self.r.set(self.prefix + "info:" + job_id, info, ex=INFO_TTL)

    async def save_info_if_queued(self, job_id: str, info: bytes) -> bool:
        """``save_info`` while the job is still in the queue; False (nothing saved) once taken."""
        return bool(await self._save_queued(keys=[self.queue_key, self.prefix + "info:" + job_id],
                                            args=[job_id, info, INFO_TTL]))

    async def load_info(self, job_id: str) -> bytes | None:
        raw: bytes | None = await self.r.get(self.prefix + "info:" + job_id)
        return raw

    # -- leases: which running egress has a live worker ---------------------------------------
    async def hold(self, job_ids: list[str], ttl: float) -> None:
        """Renew this node's lease on each of its running egresses."""
        if not job_ids:
            return
        async with self.r.pipeline(transaction=False) as p:
            for eid in job_ids:
                p.set(self.prefix + "lease:" + eid, self.node_id, px=int(ttl * 1000))
            p.sadd(self.running_key, *job_ids)
            await p.execute()

    async def release(self, job_id: str) -> None:
        async with self.r.pipeline(transaction=True) as p:
            p.srem(self.running_key, job_id)
            p.delete(self.prefix + "lease:" + job_id)
            await p.execute()

    async def take_lost(self, mine: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Running egresses whose worker's lease expired; each is given to one node only."""
        lost = []
        for raw in await self.r.smembers(self.running_key):
            eid = raw.decode()
            if eid in mine or await self.r.exists(self.prefix + "lease:" + eid):
                continue
            if await self.r.set(self.prefix + "reaped:" + eid, self.node_id, nx=True, ex=INFO_TTL):
                lost.append(eid)
            await self.r.srem(self.running_key, eid)
        return lost

    # -- a StopEgress that raced a hand-over --------------------------------------------------
    async def request_stop(self, job_id: str) -> None:
        await self.r.set(self.prefix + "stop:" + job_id, self.node_id, ex=300)

    async def take_stop(self, job_id: str) -> bool:
        return bool(await self.r.delete(self.prefix + "stop:" + job_id))

    def _req(self, job_id: str) -> str:
        return self.prefix + "req:" + job_id
