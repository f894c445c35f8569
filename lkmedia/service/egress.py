"""``lkmedia egress``: the drop-in egress service livekit-server drives over Redis.

It serves EgressInternal.StartEgress (affinity from the Go cpu_cost admission) and
ListActiveEgress, and one EgressHandler topic per running egress (StopEgress,
UpdateStream). Every status goes to livekit-server as IOInfo.CreateEgress (once,
first) and IOInfo.UpdateEgress (ACTIVE, ENDING, then the terminal status), which is
what turns into the egress_started / egress_updated / egress_ended webhooks.
Each job runs in its own process (lkmedia.service.supervisor); this process alone talks
to Redis. Once a second it measures every job's CPU and memory: admission counts what
they really use, the kill policy drains then kills a job over its limits, and
calibration learns what each request type costs here (lkmedia.service.monitor).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import tempfile
import time
from typing import Any

from livekit.protocol import egress as lk

from ..egress.config import egress_config
from ..egress.errors import EgressError
from ..egress.ipc import pack
from ..egress.job import EgressJob, read_recovery
from ..rpc import RedisBus, RequestContext, RpcError
from ..rpc.egress import EgressHandlerServer, EgressInternalServer, IOInfoClient
from ..rpc.messages import StartEgressRequest, unpack_start_egress
from ..storage.factory import settings_from_yaml
from .admission import GB, Admission, AdmissionError, ProcSampler, Sample
from .config import ServiceConfig
from .health import HealthServer, request_json, status_body
from .metrics import EgressMetrics, MetricsServer
from .monitor import Action, Calibration, KillPolicy
from .queue import QUEUE_AFFINITY, StartQueue, dedup_key
from .supervisor import JobProcess, Spawner

log = logging.getLogger("lkmedia.service")
S = lk.EgressStatus
TERMINAL = (S.EGRESS_COMPLETE, S.EGRESS_FAILED, S.EGRESS_ABORTED, S.EGRESS_LIMIT_REACHED)
RESULTS = {S.EGRESS_COMPLETE: "completed", S.EGRESS_LIMIT_REACHED: "completed", S.EGRESS_ABORTED: "aborted",
           S.EGRESS_FAILED: "process_error"}


def loop_time() -> float:
    return asyncio.get_running_loop().time()


PUMP_EVERY = 0.25  # seconds between looks at the start queue (sooner when a job ends)
LEASE_TTL = 15.0  # a running egress whose worker has not renewed its lease this long is lost
LEASE_EVERY = 3.0  # seconds between lease renewals (and looks for lost egresses)
STOP_RACE = 10.0  # seconds after taking a queued request during which a relayed StopEgress is looked for
MONITOR_EVERY = 1.0  # seconds between measurements of the jobs (the Go monitor's tick)


class EgressService:
    """``dispatcher=True``: ``lkmedia dispatcher``, no media. It claims every StartEgress
    with the queue's low affinity, queues it, answers StopEgress for what it queued and
    fails requests queued longer than ``queue.max_wait``: a fleet can sit at zero workers."""

    def __init__(self, conf: ServiceConfig, *, tmp_dir: str | None = None, dispatcher: bool = False) -> None:
        self.conf = conf
        self.dispatcher = dispatcher
        self.node_id = conf.node_id or f"{'ND' if dispatcher else 'NE'}_{os.getpid()}"
        self.tmp_dir = tmp_dir or os.path.join(tempfile.gettempdir(), "lkmedia-egress")
        r = conf.redis
        if r is None or not r.address:
            raise ValueError("redis.address is required: livekit-server reaches egress through Redis")
        self.bus = RedisBus(r.address, username=r.username or None, password=r.password or None, db=r.db)
        self.calibration = Calibration(os.path.join(self.tmp_dir, "calibration.json") if conf.jobs.calibrate
                                       else None)
        self.admission = Admission(conf.cpu_cost,
                                   learned=self.calibration.cost if conf.jobs.calibrate else None)
        self.policy = KillPolicy(conf.cpu_cost, conf.jobs, self.admission.num_cpus)
        self.spawner = Spawner(spare=conf.jobs.spare and not dispatcher)
        self.io = IOInfoClient(self.bus, create_timeout=float(conf.io_create_timeout) or 15.0,
                               update_timeout=float(conf.io_update_timeout) or 30.0)
        self.internal = EgressInternalServer(self.bus, start_egress=self._start_egress, affinity=self._affinity,
                                             list_active=lambda: list(self.jobs), cluster_id=conf.cluster_id)
        self.jobs: dict[str, JobProcess] = {}
        self._requests: dict[str, tuple[str, Any]] = {}
        self._handlers: dict[str, EgressHandlerServer] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.shutting_down = False
        self._storage_yaml = self._storage_dict()
        self.storage = settings_from_yaml(self._storage_yaml)
        self.metrics = EgressMetrics(self.node_id, conf.cluster_id, is_idle=lambda: not self.jobs,
                                     can_accept=lambda: not self.shutting_down,
                                     is_disabled=lambda: not self.io.healthy, is_terminating=lambda: self.shutting_down)
        for rtype, learned in self.calibration.learned.items():  # from earlier runs on this node
            self.metrics.calibrated_cost(rtype, learned.cpu)
        self.health = HealthServer(conf.health_port, self._health) if conf.health_port else None
        self.prom = MetricsServer(self.metrics, conf.prometheus_port) if conf.prometheus_port else None
        q = conf.queue
        self.queue = (StartQueue(self.bus.redis, self.node_id, max_wait=float(q.max_wait),
                                 dedup_window=float(q.dedup_window)) if q.enabled or dispatcher else None)
        self._queued: dict[str, EgressHandlerServer] = {}  # requests this node queued: their handlers
        self._positions: dict[str, int] = {}  # the queue position last reported for each of them
        self._from_queue: dict[str, float] = {}  # egress id -> when this node took it from the queue
        self._pump_wake = asyncio.Event()
        self._pump_lock = asyncio.Lock()
        self._closing = False
        self._lease_at = 0.0
        self._pump_task: asyncio.Task[None] | None = None
        self._monitor_task: asyncio.Task[None] | None = None

    def _storage_dict(self) -> dict[str, Any]:
        """``storage:`` and ``backup:`` as YAML reads them: what a job process is given."""
        d: dict[str, Any] = {}
        for key in ("storage", "backup"):
            v = getattr(self.conf, key)
            if v is not None:
                d[key] = {k: x for k, x in dataclasses.asdict(v).items() if x not in (None, "", {}, [])}
        return d

    # -- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        os.makedirs(self.tmp_dir, exist_ok=True)
        await self.bus.start()
        await self.io.start()
        if not self.dispatcher:
            self.spawner.start()
            await self._recover_orphans()
            self._monitor_task = asyncio.create_task(self._monitor(), name="job-monitor")
        await self.internal.start()
        for srv in (self.health, self.prom):
            if srv is not None:
                await srv.start()
        if self.queue is not None:
            self._pump_task = asyncio.create_task(self._pump(), name="start-queue")
        log.info("egress %s %s ready (redis %s)", "dispatcher" if self.dispatcher else "service",
                 self.node_id, self.bus.address)

    async def run(self) -> None:
        """Serve until a signal. SIGTERM drains: no new requests; running jobs go on until
        they end (StopEgress, the room closing, a limit) or ``drain_timeout`` passes. A
        second SIGTERM, or SIGINT, stops every job now, each output finalised. Then exit."""
        await self.start()
        term, now = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_term() -> None:
            (now if term.is_set() else term).set()

        loop.add_signal_handler(signal.SIGTERM, on_term)
        loop.add_signal_handler(signal.SIGINT, now.set)
        loop.add_signal_handler(signal.SIGUSR1, _log_tasks)
        try:
            waits = [asyncio.create_task(term.wait()), asyncio.create_task(now.wait())]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            if not now.is_set():
                await self.drain(float(self.conf.drain_timeout) or None, interrupt=now)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.close()
            loop.remove_signal_handler(signal.SIGUSR1)

    async def _stop_accepting(self) -> None:
        if not self.shutting_down:
            self.shutting_down = True
            await self.internal.stop_accepting()

    async def drain(self, timeout: float | None = None, interrupt: asyncio.Event | None = None) -> None:
        """Take no new requests and wait until every running job has ended by itself,
        ``timeout`` seconds (None: no limit) have passed or ``interrupt`` is set."""
        await self._stop_accepting()
        log.info("draining: %d job(s) running, %s", len(self.jobs),
                 f"stopping them in {timeout:g} s" if timeout else "waiting for them to end")
        stop = asyncio.create_task(interrupt.wait()) if interrupt is not None else None
        try:
            deadline = None if timeout is None else loop_time() + timeout
            while self._tasks and not (interrupt is not None and interrupt.is_set()):
                left = None if deadline is None else deadline - loop_time()
                if left is not None and left <= 0:
                    log.info("drain timeout: stopping %d job(s)", len(self.jobs))
                    break
                await asyncio.wait([*self._tasks, *([stop] if stop else [])], timeout=left,
                                   return_when=asyncio.FIRST_COMPLETED)
        finally:
            if stop is not None:
                stop.cancel()

    async def close(self, drain_timeout: float = 60.0) -> None:
        await self._stop_accepting()
        for job in list(self.jobs.values()):
            await job.stop("shutdown")
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=drain_timeout)
        for job in list(self.jobs.values()):  # finalising took too long: what they wrote is recovered
            log.error("egress %s: not finished %g s after its stop: SIGKILL", job.info.egress_id, drain_timeout)
            job.result = job.result or "killed_shutdown"
            job.signal(signal.SIGKILL)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=30)
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._closing = True
        for task in (self._pump_task, self._monitor_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._pump_task = self._monitor_task = None
        await self.spawner.close()
        for handler in list(self._queued.values()):
            await handler.close()
        self._queued.clear()
        for srv in (self.health, self.prom):
            if srv is not None:
                await srv.stop()
        await self.internal.close()
        await self.io.close()
        await self.bus.close()

    # -- StartEgress ---------------------------------------------------------------
    def _affinity(self, req: StartEgressRequest) -> float:
        if self.shutting_down:
            return -1.0
        try:
            _, inner = unpack_start_egress(req)
        except RpcError:
            return 1.0  # claim it so the caller gets the decoding error
        if not self.io.healthy:
            return -1.0
        if self.dispatcher:
            return QUEUE_AFFINITY
        if self.queue is not None:
            # Every start goes through the queue, so the first claim can take it at once
            # (livekit-server accepts an affinity of 1 without waiting for others): requests
            # are queued in the order they were made, and workers with room start the oldest.
            return 1.0
        return self.admission.affinity(inner, estimated_cpu=req.estimated_cpu or None)

    def _new_info(self, req: StartEgressRequest, kind: str, inner: Any, room_name: str) -> lk.EgressInfo:
        now = time.time_ns()
        info = lk.EgressInfo(egress_id=req.egress_id, room_id=req.room_id, room_name=room_name,
                             source_type=lk.EgressSourceType.EGRESS_SOURCE_TYPE_SDK, status=S.EGRESS_STARTING,
                             started_at=now, updated_at=now)
        getattr(info, kind).CopyFrom(_redacted(inner))
        return info

    async def _start_egress(self, req: StartEgressRequest, ctx: RequestContext) -> lk.EgressInfo:
        kind, inner = unpack_start_egress(req)
        if req.egress_id in self.jobs or req.egress_id in self._queued:
            raise RpcError("already_exists", "egress already exists")
        try:
            cfg = egress_config(req.egress_id, req.room_id, inner)
        except EgressError as e:
            raise RpcError(e.code, str(e)) from None
        q = self.queue
        if q is None:
            return await self._launch(req, kind, inner, cfg, None)
        key = dedup_key(kind, inner)
        earlier = await q.dedup(key, req.egress_id)
        if earlier is not None and earlier != req.egress_id:
            info = await q.load_info(earlier)
            if info is not None and info.status not in TERMINAL:
                log.info("egress %s: the same request as %s within %g s: answering with that one",
                         req.egress_id, earlier, q.dedup_window)
                return info
            await q.redirect(key, req.egress_id)
        queued = await self._enqueue(req, kind, inner, cfg)
        if not self.dispatcher:
            await self._pump_now()  # room here and it is the oldest: it starts now
            job = self.jobs.get(req.egress_id)
            if job is not None:
                return lk.EgressInfo.FromString(job.info.SerializeToString())
        await self._say_position(queued)
        return queued

    async def _launch(self, req: StartEgressRequest, kind: str, inner: Any, cfg: Any,
                      queued: lk.EgressInfo | None) -> lk.EgressInfo:
        """Start the job now; ``queued``: the EgressInfo it had while queued."""
        try:
            self.admission.accept(req.egress_id, inner, req.estimated_cpu or None)
        except AdmissionError as e:
            raise RpcError(e.code, str(e)) from None
        if queued is None:
            info = self._new_info(req, kind, inner, cfg.room_name)
        else:
            info = queued
            info.status, info.details, info.updated_at = S.EGRESS_STARTING, "", time.time_ns()
        record = self._new_job(req, cfg, info)  # the job's files and recovery record, kept here
        try:
            if queued is None:
                await self.io.create_egress(info)
            else:
                await self.io.update_egress(lk.EgressInfo.FromString(info.SerializeToString()))
            job = await self.spawner.take()
        except (RpcError, OSError):
            self.admission.ended(req.egress_id)
            raise
        job.info = info
        record.write_recovery(req.SerializeToString(), self.node_id)
        if self.queue is not None:
            await self.queue.save_info(info)
            await self.queue.hold([req.egress_id], LEASE_TTL)
        old = self._queued.pop(req.egress_id, None)
        if old is not None:  # this node queued it: its queue handler gives way to the job's
            await old.close()
        handler = EgressHandlerServer(self.bus, req.egress_id, stop_egress=self._stop_egress,
                                      update_stream=self._update_stream)
        await handler.start()
        self.jobs[req.egress_id] = job
        self._requests[req.egress_id] = (kind, inner)
        self._handlers[req.egress_id] = handler
        request_type = "media" if kind == "egress" else kind
        self.metrics.request_started(request_type)
        self.admission.started(req.egress_id)
        task = asyncio.get_running_loop().create_task(self._supervise(job, record, req, request_type),
                                                      name=f"egress:{req.egress_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return lk.EgressInfo.FromString(info.SerializeToString())

    def _new_job(self, req: StartEgressRequest, cfg: Any, info: lk.EgressInfo) -> EgressJob:
        return EgressJob(cfg, info, ws_url=req.ws_url or self.conf.ws_url, api_key=self.conf.api_key,
                         api_secret=self.conf.api_secret, tmp_dir=self.tmp_dir, storage=self.storage,
                         on_update=self._update, max_duration=self._limit_for(cfg))

    def _limit_for(self, cfg: Any) -> float:
        lim = self.conf.session_limits
        values = []
        if cfg.file is not None:
            values.append(float(lim.file_output_max_duration or 0))
        if cfg.segments is not None:
            values.append(float(lim.segment_output_max_duration or 0))
        if cfg.stream is not None or cfg.websocket is not None:
            values.append(float(lim.stream_output_max_duration or 0))
        if cfg.images:
            values.append(float(lim.image_output_max_duration or 0))
        set_ = [v for v in values if v > 0]
        return min(set_) if set_ else 0.0

    async def _supervise(self, job: JobProcess, record: EgressJob, req: StartEgressRequest, kind: str) -> None:
        """Run the job in its process until the process exits. A process that ended
        without a final status (crashed, killed) is reported from what it wrote."""
        egress_id = req.egress_id
        root = logging.getLogger()
        start = {"request": pack(req.SerializeToString()), "ws_url": req.ws_url or self.conf.ws_url,
                 "api_key": self.conf.api_key, "api_secret": self.conf.api_secret, "tmp_dir": self.tmp_dir,
                 "storage": self._storage_yaml, "max_duration": self._limit_for(record.cfg),
                 "log_level": logging.getLevelName(root.getEffectiveLevel()).lower(),
                 "json_log": any(type(h.formatter).__name__ == "JsonFormatter" for h in root.handlers)}
        try:
            code = await job.run(start, record.info, self._update)
            if job.info.status not in TERMINAL:
                how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
                cause = job.kill_error or f"the egress process {how} before it finished"
                log.error("egress %s: %s: reporting what it wrote", egress_id, cause)
                job.result = job.result or "process_error"
                record.info = lk.EgressInfo.FromString(job.info.SerializeToString())
                job.info = await record.recover(cause)
                await self._update(job.info)
        except Exception:
            log.exception("egress %s: job crashed", egress_id)
            if job.info.status not in TERMINAL:
                job.info.status = S.EGRESS_FAILED
                job.info.error = "egress job crashed"
                job.info.ended_at = job.info.updated_at = time.time_ns()
                await self._update(job.info)
        finally:
            handler = self._handlers.pop(egress_id, None)
            if handler is not None:
                await handler.close()
            self.jobs.pop(egress_id, None)
            self._requests.pop(egress_id, None)
            stats = self.admission.ended(egress_id)
            if stats.request_type:
                learned = self.calibration.learn(stats.request_type, stats.avg_cpu, stats.samples)
                if learned is not None:
                    self.metrics.calibrated_cost(stats.request_type, learned)
                log.info("egress %s: used %.2f CPUs on average (at most %.2f), at most %.0f MB", egress_id,
                         stats.avg_cpu, stats.max_cpu, stats.max_memory / 2**20)
            if self.queue is not None:
                try:
                    await self.queue.release(egress_id)
                except Exception as e:  # Redis away: the lease expires and take_lost sees it ended
                    log.warning("egress %s: could not release its lease: %s", egress_id, e)
            self._pump_wake.set()  # room for the next queued request
            self.metrics.request_ended(kind)
            self.metrics.handler_result(kind, job.result or RESULTS.get(job.info.status, "process_error"))
            record.cleanup()

    async def _update(self, info: lk.EgressInfo) -> None:
        copy = lk.EgressInfo.FromString(info.SerializeToString())
        if self.queue is not None:
            try:
                await self.queue.save_info(copy)
            except Exception as e:  # dedup answers may be stale; the update itself must go out
                log.warning("egress %s: could not save its info for dedup: %s", info.egress_id, e)
        await self.io.update_egress(copy)

    # -- crash recovery -------------------------------------------------------------
    async def _recover_orphans(self) -> None:
        """Jobs a previous worker process left in our tmp dir when it died (SIGKILL, OOM,
        a node crash with the volume kept): report each FAILED with the output it had
        written, uploaded as its request said. Nothing recorded is lost."""
        try:
            names = sorted(os.listdir(self.tmp_dir))
        except FileNotFoundError:
            return
        for name in names:
            job_dir = os.path.join(self.tmp_dir, name)
            rec = read_recovery(job_dir)
            if rec is None or (rec["pid"] != os.getpid() and _alive(rec["pid"])):
                continue
            try:
                req = StartEgressRequest.FromString(rec["request"])
                _, inner = unpack_start_egress(req)
                cfg = egress_config(req.egress_id, req.room_id, inner)
                job = self._new_job(req, cfg, lk.EgressInfo.FromString(rec["info"]))
                final = await job.recover()
                log.warning("egress %s: its worker (pid %d) died; %s", req.egress_id, rec["pid"], final.error)
                await self._update(final)
                job.cleanup()
            except Exception as e:
                log.error("egress in %s: could not recover it: %s", job_dir, e)

    # -- the start queue -------------------------------------------------------------
    async def _enqueue(self, req: StartEgressRequest, kind: str, inner: Any, cfg: Any) -> lk.EgressInfo:
        """livekit-server learns of the egress and its StopEgress handler is up before the
        request enters the queue, where any worker may take it at once."""
        assert self.queue is not None
        info = self._new_info(req, kind, inner, cfg.room_name)
        info.details = "queued"
        await self.io.create_egress(info)
        await self.queue.save_info(info)
        await self._answer_queued(req.egress_id)
        pos = await self.queue.enqueue(req.egress_id, req.SerializeToString())
        info.details = f"queued, position {pos}"
        self._positions[req.egress_id] = pos
        log.info("egress %s queued at position %d", req.egress_id, pos)
        self._pump_wake.set()
        return lk.EgressInfo.FromString(info.SerializeToString())

    async def _answer_queued(self, egress_id: str) -> None:
        """StopEgress / UpdateStream for a request while it waits in the queue."""
        handler = EgressHandlerServer(self.bus, egress_id, stop_egress=self._stop_queued,
                                      update_stream=self._update_queued)
        await handler.start()
        self._queued[egress_id] = handler

    async def _say_position(self, info: lk.EgressInfo) -> None:
        """Still queued after our own look: tell livekit-server (and dedup) the position."""
        assert self.queue is not None
        current = await self.queue.load_info(info.egress_id)
        if current is None or current.status != S.EGRESS_STARTING or not current.details.startswith("queued"):
            return  # taken meanwhile: its runner reports now
        current.details, current.updated_at = info.details, time.time_ns()
        if await self.queue.save_info_if_queued(current):  # else just taken: its worker reports
            await self.io.update_egress(current)

    async def _end_queued(self, egress_id: str, status: int, error: str = "", details: str = "") -> lk.EgressInfo:
        assert self.queue is not None
        info = await self.queue.load_info(egress_id) or lk.EgressInfo(egress_id=egress_id)
        info.status, info.error, info.details = status, error, details
        info.ended_at = info.updated_at = time.time_ns()
        await self.queue.done(egress_id)
        handler = self._queued.pop(egress_id, None)
        if handler is not None:
            asyncio.get_running_loop().create_task(handler.close())  # may be inside its handler
        await self._update(info)
        return info

    async def _stop_queued(self, req: lk.StopEgressRequest, ctx: RequestContext) -> lk.EgressInfo:
        assert self.queue is not None
        eid = req.egress_id
        if await self.queue.remove(eid):
            log.info("egress %s: stopped while queued", eid)
            return await self._end_queued(eid, S.EGRESS_ABORTED, details="stopped while queued")
        if eid in self.jobs:
            return await self._stop_egress(req, ctx)
        # Another node has just taken it: it stops the job when it sees this.
        await self.queue.request_stop(eid)
        info = await self.queue.load_info(eid)
        if info is None:
            raise RpcError("not_found", "egress not found")
        return info

    async def _update_queued(self, req: lk.UpdateStreamRequest, ctx: RequestContext) -> lk.EgressInfo:
        if req.egress_id in self.jobs:
            return await self._update_stream(req, ctx)
        raise RpcError("failed_precondition", "the egress is queued: update its streams once it is ACTIVE")

    async def _pump(self) -> None:
        while not self._closing:
            # asyncio.timeout, not wait_for: on 3.11 a cancel that meets wait_for's own
            # timeout comes out as TimeoutError, and this loop would never end.
            try:
                async with asyncio.timeout(PUMP_EVERY):
                    await self._pump_wake.wait()
            except TimeoutError:
                pass
            self._pump_wake.clear()
            try:
                await self._pump_now()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis away: the next round tries again
                log.warning("start queue: %s: %s", type(e).__name__, e)

    async def _pump_now(self) -> None:
        async with self._pump_lock:  # one round at a time: admission is checked, then reserved
            await self._pump_once()

    async def _pump_once(self) -> None:
        q = self.queue
        assert q is not None
        for eid in await q.take_expired():
            log.warning("egress %s: queued longer than %g s: failing it", eid, q.max_wait)
            await self._end_queued(eid, S.EGRESS_FAILED,
                                   error=f"no egress worker had room for it within {q.max_wait:g} s "
                                         f"(queue.max_wait)")
        while not self.shutting_down and not self.dispatcher and self.io.healthy:
            head = await q.head()
            if head is None:
                break
            eid, raw = head
            try:
                req = StartEgressRequest.FromString(raw)
                kind, inner = unpack_start_egress(req)
            except Exception as e:
                if await q.remove(eid):
                    await self._end_queued(eid, S.EGRESS_FAILED, error=f"unreadable queued request: {e}")
                continue
            if not self.admission.check(inner, req.estimated_cpu or None).accept:
                break  # first in, first out: nobody jumps the head
            if await q.claim(eid) is None:
                continue  # another node took it first
            try:
                cfg = egress_config(req.egress_id, req.room_id, inner)
                await self._launch(req, kind, inner, cfg, await q.load_info(eid))
                self._from_queue[eid] = time.monotonic()
                log.info("egress %s: started from the queue", eid)
            except Exception as e:
                log.error("egress %s: could not start from the queue: %s", eid, e)
                await self._end_queued(eid, S.EGRESS_FAILED, error=f"could not start: {e}")
            await q.done(eid)
        now = time.monotonic()
        for eid, at in list(self._from_queue.items()):
            if now - at > STOP_RACE or eid not in self.jobs:
                del self._from_queue[eid]
            elif await q.take_stop(eid):
                log.info("egress %s: StopEgress reached the node that had queued it: stopping", eid)
                await self.jobs[eid].stop()
        order = await q.positions() if self._queued else {}
        for eid in list(self._queued):
            if eid in self.jobs:
                continue
            pos = order.get(eid)
            if pos is None:
                handler = self._queued.pop(eid)
                await handler.close()  # taken by another node, which answers for it now
            elif self._positions.get(eid) != pos:
                self._positions[eid] = pos
                await self._say_position(lk.EgressInfo(egress_id=eid, details=f"queued, position {pos}"))
        for eid in [e for e in self._positions if e not in self._queued]:
            del self._positions[eid]
        if now - self._lease_at >= LEASE_EVERY:
            self._lease_at = now
            await q.alive(LEASE_TTL)
            await q.hold(list(self.jobs), LEASE_TTL)
            for eid in await q.take_lost(set(self.jobs)):
                await self._end_lost(eid)
            for eid in await q.adopt_orphans():
                if eid not in self._queued and not self.shutting_down:
                    log.info("egress %s: its queueing node is gone: answering for it here", eid)
                    await self._answer_queued(eid)
        self.metrics.queue_state(await q.depth(), await q.oldest_wait(), self.admission.available_cpu())

    async def _end_lost(self, egress_id: str) -> None:
        """Its worker stopped renewing the lease (killed, its node gone) and has not come
        back to report it: end it FAILED so that nobody waits on it for ever."""
        assert self.queue is not None
        info = await self.queue.load_info(egress_id)
        if info is None or info.status in TERMINAL:
            return
        log.warning("egress %s: its worker has not been heard of for %g s: failing it", egress_id, LEASE_TTL)
        info.status = S.EGRESS_FAILED
        info.error = (f"the egress worker was lost (no heartbeat for {LEASE_TTL:g} s); what it recorded stays "
                      f"on its volume and is reported when it restarts")
        info.ended_at = info.updated_at = time.time_ns()
        await self._update(info)

    # -- measurements: admission, the kill policy, calibration ----------------------
    async def _monitor(self) -> None:
        sampler = ProcSampler()
        while not self._closing:
            await asyncio.sleep(MONITOR_EVERY)
            pids = {eid: job.pid for eid, job in self.jobs.items()}
            try:
                sample = await asyncio.to_thread(sampler.sample, pids)
                self._measured(sample)
                for action in self.policy.observe(sample, self.admission.allowed_cpu()):
                    await self._enforce(action)
            except asyncio.CancelledError:
                raise
            except Exception:  # a measurement must never take the service down
                log.exception("job monitor")

    def _measured(self, sample: Sample) -> None:
        memory = sample.node_memory(self.conf.cpu_cost.memory_source)
        self.admission.record_usage(sample.cpu, memory_gb=memory / GB, memory_by_job=sample.memory_by_job)
        m = self.metrics
        m.cpu_load.set(sample.node_load)
        m.proc_rss_bytes.set(sample.rss_bytes)
        m.cgroup_read_success.set(0 if sample.cgroup_bytes is None else 1)
        if sample.cgroup_bytes is not None:
            m.cgroup_memory_bytes.set(sample.cgroup_bytes)
        total, available, _, _ = self.admission.cpu_usage()
        m.load_ratio("cpu", (total * self.conf.cpu_cost.max_cpu_utilization - available)
                     / (total * self.conf.cpu_cost.max_cpu_utilization))
        if self.conf.cpu_cost.max_memory > 0:
            m.load_ratio("memory", memory / GB / self.conf.cpu_cost.max_memory)
        m.job_usage(self.admission.request_types(), self.admission.allowed_cpu(), sample.cpu, sample.memory_by_job)

    async def _enforce(self, action: Action) -> None:
        job = self.jobs.get(action.egress_id)
        if job is None:
            return
        if action.kind == "stop":
            job.result = job.result or action.result
            await job.stop(action.message)
        else:
            job.kill(action.message, action.result, float(self.conf.jobs.kill_timeout))

    # -- EgressHandler -------------------------------------------------------------
    async def _stop_egress(self, req: lk.StopEgressRequest, ctx: RequestContext) -> lk.EgressInfo:
        job = self.jobs.get(req.egress_id)
        if job is None:
            raise RpcError("not_found", "egress not found")
        return lk.EgressInfo.FromString((await job.stop()).SerializeToString())

    async def _update_stream(self, req: lk.UpdateStreamRequest, ctx: RequestContext) -> lk.EgressInfo:
        job = self.jobs.get(req.egress_id)
        if job is None:
            raise RpcError("not_found", "egress not found")
        try:
            info = await job.update_stream(list(req.add_output_urls), list(req.remove_output_urls))
        except (EgressError, ValueError) as e:
            raise RpcError(getattr(e, "code", "invalid_argument"), str(e)) from None
        await self._update(info)
        return lk.EgressInfo.FromString(info.SerializeToString())

    # -- health --------------------------------------------------------------------
    def _health(self) -> dict[str, Any]:
        return status_body(self.admission.available_cpu(),
                           {eid: request_json(kind, msg) for eid, (kind, msg) in self._requests.items()})


def _redacted(msg: Any) -> Any:
    """A copy of the request fit for EgressInfo: stream keys and storage secrets removed."""
    from ..redact import redact_url

    out = type(msg).FromString(msg.SerializeToString())
    for so in list(getattr(out, "stream_outputs", [])) + ([out.stream] if _has(out, "stream") else []):
        urls = [redact_url(u) for u in so.urls]
        del so.urls[:]
        so.urls.extend(urls)
    for field in ("file_outputs", "segment_outputs", "image_outputs"):
        for o in getattr(out, field, []):
            _scrub_upload(o)
    for field in ("file", "segments"):
        if _has(out, field):
            _scrub_upload(getattr(out, field))
    for o in getattr(out, "outputs", []):  # v2 StartEgress
        if o.HasField("stream"):
            urls = [redact_url(u) for u in o.stream.urls]
            del o.stream.urls[:]
            o.stream.urls.extend(urls)
        for field in ("file", "segments", "images"):
            if o.HasField(field):
                _scrub_upload(getattr(o, field))
        if o.HasField("storage"):
            _scrub_upload(o.storage)
    if _has(out, "storage"):
        _scrub_upload(out.storage)
    return out


def _has(msg: Any, field: str) -> bool:
    return field in msg.DESCRIPTOR.fields_by_name and msg.HasField(field)


def _scrub_upload(o: Any) -> None:
    for provider, keys in (("s3", ("secret", "session_token")), ("azure", ("account_key",)),
                           ("gcp", ("credentials",)), ("aliOSS", ("secret",))):
        if _has(o, provider):
            sub = getattr(o, provider)
            for k in keys:
                if getattr(sub, k, ""):
                    setattr(sub, k, "{redacted}")


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _log_tasks() -> None:
    """SIGUSR1: log every asyncio task and where it waits (a hung shutdown, a stuck job)."""
    import io

    for t in asyncio.all_tasks():
        buf = io.StringIO()
        t.print_stack(limit=8, file=buf)
        log.warning("task %s:\n%s", t.get_name(), buf.getvalue())
