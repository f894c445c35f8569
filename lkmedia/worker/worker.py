"""The worker core: what every job kind's service shares (egress now, ingress next).

It takes validated specs (``submit``), queues them in Redis in request order with dedup
(lkmedia.worker.pump), admits them (lkmedia.worker.admission), runs each in its own
process under a supervisor (lkmedia.worker.supervisor), measures them once a second for
admission, the kill policy and calibration (lkmedia.worker.monitor), relays each Info its
job sends through ``Hooks`` and drains on request. It knows nothing of media, of the
kind's requests or of its RPCs: the kind's service layer (lkmedia.service.egress) turns
requests into specs and RPC calls into ``submit`` / ``stop`` / ``request``.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from google.protobuf.message import Message

from ..core.clock import sleep_to_tick
from .admission import GB, Admission
from .host import HostPool
from .kind import JobError, JobKind
from .monitor import Action, Calibration, KillPolicy
from .process import Spawner
from .pump import QueuePump
from .queue import QUEUE_AFFINITY, StartQueue
from .record import JobRecord
from .sampler import ProcSampler, Sample
from .supervisor import Liveness, Logging, Supervisor

log = logging.getLogger("lkmedia.worker")

MONITOR_EVERY = 1.0  # seconds between measurements of the jobs (the Go monitor's tick)
START_WINDOW = 10.0  # seconds a job counts as starting at most (max_starting, the CPU rule)
LIGHT_START = 0.2  # what a starting light job (lkmedia.worker.host) counts of max_starting


InfoIn = TypeVar("InfoIn", bound=Message, contravariant=True)


class Hooks(Protocol[InfoIn]):
    """What the kind's service layer does for the worker."""

    @property
    def healthy(self) -> bool:
        """Infos reach livekit-server (else this node claims nothing)."""
        ...

    async def create(self, info: InfoIn) -> None:
        """A new job: livekit-server learns of it (IOInfo.CreateEgress)."""
        ...

    async def relay(self, info: InfoIn) -> None:
        """A job's newer Info (IOInfo.UpdateEgress)."""
        ...

    async def track(self, job_id: str) -> None:
        """This node answers for the job now (queued here, or running): its RPC topic."""
        ...

    async def untrack(self, job_id: str) -> None: ...


class WorkerMetrics(Protocol):
    def request_started(self, request_type: str) -> None: ...

    def request_ended(self, request_type: str) -> None: ...

    def handler_result(self, request_type: str, result: str) -> None: ...

    def calibrated_cost(self, request_type: str, cpu: float) -> None: ...

    def queue_state(self, depth: int, oldest_wait: float, capacity_free: float) -> None: ...

    def job_usage(self, types: dict[str, str], predicted: dict[str, float], cpu: dict[str, float],
                  memory: dict[str, int]) -> None: ...

    def node_usage(self, load: float, rss: int, cgroup: int | None, cpu_ratio: float,
                   memory_ratio: float | None) -> None: ...


@dataclass
class WorkerSettings:
    node_id: str
    tmp_dir: str  # each job's directory is <tmp_dir>/<job id>
    dispatcher: bool = False  # queue only, run nothing
    queue: bool = True  # False: claim and start at once, as the Go services do
    max_wait: float = 600.0  # seconds a request may stay queued (0: for ever)
    dedup_window: float = 30.0
    max_starting: int = 0  # jobs starting at once (0: one per CPU); the rest wait in the queue
    kill_timeout: float = 20.0
    spare: bool = True
    calibrate: bool = False
    jobs_per_process: int = 0  # light jobs (shared_types) sharing one process; 0 or 1: each its own
    shared_types: frozenset[str] = frozenset({"track"})  # request types that are light
    liveness: Liveness = field(default_factory=Liveness)
    logs: Logging = field(default_factory=Logging)


class Worker:
    def __init__(self, kind: JobKind[Any], settings: WorkerSettings, *, redis: Any, hooks: Hooks[Any],
                 admission: Admission, policy: KillPolicy, metrics: WorkerMetrics, memory_source: str = "",
                 max_memory: float = 0.0, max_cpu_utilization: float = 0.8,
                 calibration: Calibration | None = None) -> None:
        self.kind, self.settings, self.hooks, self.metrics = kind, settings, hooks, metrics
        self.admission, self.policy = admission, policy
        self.calibration = calibration or Calibration(None)
        self.memory_source, self.max_memory, self.max_cpu_utilization = memory_source, max_memory, max_cpu_utilization
        self.spawner = Spawner(spare=settings.spare and not settings.dispatcher, preload=(kind.runner,))
        self.hosts = (HostPool(settings.jobs_per_process, preload=(kind.runner,))
                      if settings.jobs_per_process > 1 and not settings.dispatcher else None)
        self.jobs: dict[str, Supervisor] = {}
        self.queue = (StartQueue(redis, settings.node_id, prefix=f"lkmedia:{kind.name}:", max_wait=settings.max_wait,
                                 dedup_window=settings.dedup_window)
                      if settings.queue or settings.dispatcher else None)
        self.pump = QueuePump(self) if self.queue is not None else None
        self.draining = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._monitor_task: asyncio.Task[None] | None = None
        self._submitting: dict[str, asyncio.Future[Message]] = {}

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        os.makedirs(self.settings.tmp_dir, exist_ok=True)
        if not self.settings.dispatcher:
            self.spawner.start()
            if self.hosts is not None and self.settings.spare:
                self.hosts.start()
            self._recover_orphans()
            self._monitor_task = asyncio.get_running_loop().create_task(self._monitor(), name="job-monitor")
        if self.pump is not None:
            self.pump.start()

    def stop_accepting(self) -> None:
        self.draining = True

    async def drain(self, timeout: float | None = None, interrupt: asyncio.Event | None = None) -> None:
        """Take no new jobs; wait until every running one has ended by itself, ``timeout``
        seconds (None: no limit) have passed, or ``interrupt`` is set."""
        self.stop_accepting()
        log.info("draining: %d job(s) running, %s", len(self.jobs),
                 f"stopping them in {timeout:g} s" if timeout else "waiting for them to end")
        loop = asyncio.get_running_loop()
        stop = loop.create_task(interrupt.wait()) if interrupt is not None else None
        try:
            deadline = None if timeout is None else loop.time() + timeout
            while self._tasks and not (interrupt is not None and interrupt.is_set()):
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    log.info("drain timeout: stopping %d job(s)", len(self.jobs))
                    break
                await asyncio.wait([*self._tasks, *([stop] if stop else [])], timeout=left,
                                   return_when=asyncio.FIRST_COMPLETED)
        finally:
            if stop is not None:
                stop.cancel()
                await asyncio.gather(stop, return_exceptions=True)

    async def close(self, drain_timeout: float = 60.0) -> None:
        """Stop every job (outputs finalised) and everything else; SIGKILL what does not end
        within ``drain_timeout`` (it is reported from its files)."""
        self.stop_accepting()
        await asyncio.gather(*(sup.stop("shutdown") for sup in list(self.jobs.values())))
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=drain_timeout)
        for sup in list(self.jobs.values()):
            if sup.running:
                log.error("%s %s: not finished %g s after its stop: SIGKILL", self.kind.name, sup.job_id,
                          drain_timeout)
                sup.result = sup.result or "killed_shutdown"
                sup.signal(signal.SIGKILL)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=60)
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.pump is not None:
            await self.pump.close()
        if self._monitor_task is not None:
            self._monitor_task.cancel()
            await asyncio.gather(self._monitor_task, return_exceptions=True)
            self._monitor_task = None
        await self.spawner.close()
        if self.hosts is not None:
            await self.hosts.close(self.settings.kill_timeout)

    # -- requests ----------------------------------------------------------------------------
    def affinity(self, spec: Any | None) -> float:
        """The claim this node makes on a start request (None: it could not be read; claim
        it so that the caller gets the error)."""
        if self.draining or not self.hooks.healthy:
            return -1.0
        if spec is None:
            return 1.0
        if self.settings.dispatcher:
            return QUEUE_AFFINITY
        if self.queue is not None:
            # Every start goes through the queue, so the first claim takes it at once
            # (livekit-server accepts an affinity of 1 without waiting for others).
            return 1.0
        return self.admission.affinity(self.kind.costs(spec))

    async def submit(self, spec: Any, info: Message) -> Message:
        """A validated start request, answered at once: its Info (queued, or starting). The
        same job id asked again (livekit-server retries a call it timed out) is the same
        job: the answer is its current Info."""
        job_id = self.kind.job_id(spec)
        if job_id in self.jobs:
            return self.jobs[job_id].info
        pending = self._submitting.get(job_id)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._submitting[job_id] = fut
        try:
            result = await self._submit(job_id, spec, info)
            fut.set_result(result)
            return result
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: a retry that is not waiting must not log it
            raise
        finally:
            del self._submitting[job_id]

    async def _submit(self, job_id: str, spec: Any, info: Message) -> Message:
        if self.pump is None:  # as the Go services: admitted now or refused
            self.admission.accept(job_id, self.kind.costs(spec))
            try:
                await self.hooks.create(info)
            except BaseException:
                self.admission.ended(job_id)
                raise
            self.launch(spec, info)
            return info
        return await self.pump.submit(job_id, spec, info)

    async def stop(self, job_id: str, reason: str) -> Message:
        sup = self.jobs.get(job_id)
        if sup is not None:
            return await sup.stop(reason)
        if self.pump is not None:
            return await self.pump.stop(job_id)
        raise JobError(f"{self.kind.name} not found", "not_found")

    async def request(self, job_id: str, op: str, args: dict[str, Any]) -> Message:
        sup = self.jobs.get(job_id)
        if sup is not None:
            return await sup.request(op, args)
        if self.pump is not None and job_id in self.pump.queued:
            raise JobError(f"the {self.kind.name} is queued: call again once it is active", "failed_precondition")
        raise JobError(f"{self.kind.name} not found", "not_found")

    async def ask(self, job_id: str, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """``request``, for the job's answer."""
        sup = self.jobs.get(job_id)
        if sup is None:
            raise JobError(f"{self.kind.name} not found", "not_found")
        return await sup.ask(op, args)

    def running_ids(self) -> list[str]:
        return list(self.jobs)

    def describe_jobs(self) -> dict[str, dict[str, Any]]:
        return {jid: self.kind.describe(sup.spec) for jid, sup in self.jobs.items()}

    def starting(self) -> float:
        """Jobs starting up (process, imports, room join): not started yet, and launched
        less than START_WINDOW ago (one that waits longer, for a participant who has not
        come, is not holding the CPU the next start needs). A light job, in a shared
        process that has done its imports, counts LIGHT_START of one."""
        now = time.monotonic()
        return sum(LIGHT_START if sup.shared else 1.0 for sup in self.jobs.values()
                   if not self.kind.started(sup.info) and now - sup.started_at < START_WINDOW)

    def max_starting(self) -> int:
        return self.settings.max_starting or max(1, round(self.admission.num_cpus))

    # -- jobs --------------------------------------------------------------------------------
    def launch(self, spec: Any, info: Message) -> Supervisor:
        """Run an admitted job (it was accepted by admission under its id)."""
        job_id = self.kind.job_id(spec)
        shared = self.hosts is not None and self.kind.costs(spec).request_type in self.settings.shared_types
        sup = Supervisor(self.kind, spec, info, spawner=self.hosts if shared and self.hosts else self.spawner,
                         job_dir=os.path.join(self.settings.tmp_dir, job_id), node_id=self.settings.node_id,
                         relay=self.relay, liveness=self.settings.liveness, logs=self.settings.logs)
        self.jobs[job_id] = sup
        self._spawn(self._supervise(sup), f"{self.kind.name}:{job_id}")
        return sup

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _supervise(self, sup: Supervisor) -> None:
        job_id = sup.job_id
        request_type = self.kind.costs(sup.spec).request_type
        self.metrics.request_started(request_type)
        try:
            await self.hooks.track(job_id)
            self.admission.started(job_id)
            await self.relay(sup.info)
            await sup.run()
        except Exception:
            log.exception("%s %s: its supervision failed", self.kind.name, job_id)
            if not self.kind.is_final(sup.info):
                await self.relay(self.kind.ended(sup.info, "failed", f"the {self.kind.name} job crashed"))
        finally:
            self.jobs.pop(job_id, None)
            await self.hooks.untrack(job_id)
            self._job_ended(job_id, request_type)
            if self.queue is not None:
                try:
                    await self.queue.release(job_id)
                except Exception as e:  # Redis away: the lease expires and take_lost sees it ended
                    log.warning("%s %s: could not release its lease: %s", self.kind.name, job_id, e)
            if self.pump is not None:
                self.pump.wake()  # room for the next queued request
            self.metrics.request_ended(request_type)
            self.metrics.handler_result(request_type, sup.result or self.kind.result(sup.info))

    def _job_ended(self, job_id: str, request_type: str) -> None:
        stats = self.admission.ended(job_id)
        if not stats.request_type:
            return
        if self.settings.calibrate:
            learned = self.calibration.learn(stats.request_type, stats.avg_cpu, stats.samples)
            if learned is not None:
                self.metrics.calibrated_cost(stats.request_type, learned)
        if stats.samples:  # (a job sharing a process is not measured alone)
            log.info("%s %s: used %.2f CPUs on average (at most %.2f) over %d samples, at most %.0f MB",
                     self.kind.name, job_id, stats.avg_cpu, stats.max_cpu, stats.samples,
                     stats.max_memory / 2**20)

    async def relay(self, info: Message) -> None:
        """A job's Info to livekit-server, and (queue on) to Redis for dedup answers."""
        if self.queue is not None:
            try:
                await self.queue.save_info(self.kind.info_id(info), info.SerializeToString())
            except Exception as e:  # dedup answers may be stale; the update itself must go out
                log.warning("%s %s: could not save its info: %s", self.kind.name, self.kind.info_id(info), e)
        await self.hooks.relay(info)

    def _recover_orphans(self) -> None:
        """Jobs a previous worker process left in the tmp dir when it died (SIGKILL, OOM, a
        node crash with the volume kept): each is reported FAILED from the output it had
        written, uploaded as its request said, by a job process (off this event loop)."""
        try:
            names = sorted(os.listdir(self.settings.tmp_dir))
        except FileNotFoundError:
            return
        for name in names:
            job_dir = os.path.join(self.settings.tmp_dir, name)
            rec = JobRecord.read(job_dir)
            if rec is None or rec.kind != self.kind.name or _alive(rec.pid):
                continue
            try:
                spec = self.kind.decode_spec(rec.spec)
                info = self.kind.info_type.FromString(rec.info)
            except Exception as e:
                log.error("%s in %s: its record is unreadable: %s", self.kind.name, job_dir, e)
                continue
            sup = Supervisor(self.kind, spec, info, spawner=self.spawner, job_dir=job_dir,
                             node_id=self.settings.node_id, relay=self.relay, liveness=self.settings.liveness,
                             logs=self.settings.logs)
            log.warning("%s %s: its worker (job pid %d) died: reporting what it wrote", self.kind.name,
                        sup.job_id, rec.pid)
            self._spawn(sup.run(recover=f"the {self.kind.name} worker stopped unexpectedly (killed or crashed)"),
                        f"recover:{sup.job_id}")

    # -- measurements: admission, the kill policy, calibration -------------------------------
    async def _monitor(self) -> None:
        sampler = ProcSampler()
        while True:
            await sleep_to_tick(MONITOR_EVERY)  # (with the pings: lkmedia.core.clock.tick)
            pids = {jid: sup.pid for jid, sup in self.jobs.items() if sup.pid and not sup.shared}
            try:
                sample = await asyncio.to_thread(sampler.sample, pids)
                self._measured(sample)
                for action in self.policy.observe(sample, self.admission.allowed_cpu(),
                                                  starting=self.starting() > 0):
                    await self._enforce(action)
            except asyncio.CancelledError:
                raise
            except Exception:  # a measurement must never take the service down
                log.exception("job monitor")

    def _measured(self, sample: Sample) -> None:
        memory = sample.node_memory(self.memory_source)
        self.admission.record_usage(sample.cpu, memory_gb=memory / GB, memory_by_job=sample.memory_by_job,
                                    node_load=sample.node_load)
        total, available, _, _ = self.admission.cpu_usage()
        limit = total * self.max_cpu_utilization
        self.metrics.node_usage(sample.node_load, sample.rss_bytes, sample.cgroup_bytes,
                                (limit - available) / limit if limit else 0.0,
                                memory / GB / self.max_memory if self.max_memory > 0 else None)
        self.metrics.job_usage(self.admission.request_types(), self.admission.allowed_cpu(), sample.cpu,
                               sample.memory_by_job)

    async def _enforce(self, action: Action) -> None:
        sup = self.jobs.get(action.job_id)
        if sup is None:
            return
        if action.kind == "stop":
            sup.result = sup.result or action.result
            await sup.stop(action.message)
        else:
            sup.kill(action.message, action.result, self.settings.kill_timeout)


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

