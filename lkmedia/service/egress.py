"""``lkmedia egress``: the drop-in egress service livekit-server drives over Redis.

A thin layer over the worker core (lkmedia.worker): it serves EgressInternal.StartEgress
(request -> validated spec, lkmedia.egress.spec, once) and ListActiveEgress, one
EgressHandler topic per egress it answers for (StopEgress, UpdateStream), and relays every
EgressInfo the jobs send to livekit-server's IOInfo (CreateEgress first, then UpdateEgress:
the egress_started / egress_updated / egress_ended webhooks). Health and Prometheus
metrics use the Go egress's names. ``dispatcher=True`` is ``lkmedia dispatcher``: it
queues every start with a low affinity and runs nothing, so a fleet can sit at zero workers.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import tempfile
from collections import OrderedDict
from typing import Any

from livekit.protocol import egress as lk

from ..egress.costs import check_cpu_costs
from ..egress.kind import EgressKind
from ..egress.spec import EgressSpec, initial_info, spec_from_request
from ..rpc import RedisBus, RequestContext, RpcError
from ..rpc.egress import EgressHandlerServer, EgressInternalServer, IOInfoClient
from ..rpc.messages import StartEgressRequest
from ..worker.admission import Admission
from ..worker.kind import JobError
from ..worker.monitor import Calibration, KillPolicy
from ..worker.supervisor import Liveness, Logging
from ..worker.worker import Worker, WorkerSettings
from .config import ServiceConfig
from .health import HealthServer, status_body
from .metrics import EgressMetrics, MetricsServer
from .shutdown import close_service
from .template import TemplateServer

log = logging.getLogger("lkmedia.service")
SPEC_CACHE = 256  # specs validated for a claim, kept for the start that follows it


class EgressService:
    def __init__(self, conf: ServiceConfig, *, tmp_dir: str | None = None, dispatcher: bool = False) -> None:
        self.conf = conf
        self.dispatcher = dispatcher
        self.node_id = conf.node_id or f"{'ND' if dispatcher else 'NE'}_{os.getpid()}"
        self.tmp_dir = tmp_dir or os.path.join(tempfile.gettempdir(), "lkmedia-egress")
        r = conf.redis
        if r is None or not r.address:
            raise ValueError("redis.address is required: livekit-server reaches egress through Redis")
        self.bus = RedisBus(r.address, username=r.username or None, password=r.password or None, db=r.db)
        self.io = IOInfoClient(self.bus, create_timeout=float(conf.io_create_timeout) or 15.0,
                               update_timeout=float(conf.io_update_timeout) or 30.0)
        self.kind = EgressKind(conf, self.tmp_dir)
        self.worker = self._worker()
        self.admission = self.worker.admission
        self.metrics: EgressMetrics = self.worker.metrics  # type: ignore[assignment]
        self.internal = EgressInternalServer(self.bus, start_egress=self._start_egress, affinity=self._affinity,
                                             list_active=self.worker.running_ids, cluster_id=conf.cluster_id)
        self._handlers: dict[str, EgressHandlerServer] = {}
        self._specs: OrderedDict[str, EgressSpec] = OrderedDict()
        self.health = HealthServer(conf.health_port, self._health) if conf.health_port else None
        self.prom = MetricsServer(self.metrics, conf.prometheus_port) if conf.prometheus_port else None
        self.template = TemplateServer(conf.template_port) if conf.template_port > 0 and not dispatcher else None

    def _worker(self) -> Worker:
        conf, jobs = self.conf, self.conf.jobs
        calibration = Calibration(os.path.join(self.tmp_dir, "calibration.json") if jobs.calibrate else None)
        admission = Admission(conf.cpu_cost, learned=calibration.cost if jobs.calibrate else None)
        for warning in check_cpu_costs(conf.cpu_cost, admission.num_cpus):
            log.warning("config: %s", warning)
        root = logging.getLogger()
        settings = WorkerSettings(
            node_id=self.node_id, tmp_dir=self.tmp_dir, dispatcher=self.dispatcher,
            queue=conf.queue.enabled, max_wait=float(conf.queue.max_wait),
            dedup_window=float(conf.queue.dedup_window), max_starting=jobs.max_starting, jobs_per_process=jobs.light_per_process,
            kill_timeout=float(jobs.kill_timeout), spare=jobs.spare, calibrate=jobs.calibrate,
            liveness=Liveness(float(jobs.ping_interval), float(jobs.ping_timeout)),
            logs=Logging(logging.getLevelName(root.getEffectiveLevel()).lower(),
                         any(type(h.formatter).__name__ == "JsonFormatter" for h in root.handlers)))
        metrics = EgressMetrics(self.node_id, conf.cluster_id, is_idle=lambda: not self.worker.jobs,
                                can_accept=lambda: not self.worker.draining,
                                is_disabled=lambda: not self.io.healthy,
                                is_terminating=lambda: self.worker.draining)
        for rtype, learned in calibration.learned.items():  # from earlier runs on this node
            metrics.calibrated_cost(rtype, learned.cpu)
        cc = conf.cpu_cost
        return Worker(self.kind, settings, redis=self.bus.redis, hooks=self, admission=admission,
                      policy=KillPolicy(cc, jobs, admission.num_cpus), metrics=metrics, calibration=calibration,
                      memory_source=cc.memory_source, max_memory=cc.max_memory,
                      max_cpu_utilization=cc.max_cpu_utilization)

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        os.makedirs(self.tmp_dir, exist_ok=True)
        await self.bus.start()
        await self.io.start()
        await self.worker.start()
        await self.internal.start()
        for srv in (self.health, self.prom):
            if srv is not None:
                await srv.start()
        if self.template is not None:
            try:
                await self.template.start()
            except OSError as e:  # only template-based room composites need it
                log.warning("%s: the template page is not served", e)
                self.template = None
        log.info("egress %s %s ready (redis %s)", "dispatcher" if self.dispatcher else "service",
                 self.node_id, self.bus.address)

    async def run(self) -> None:
        """Serve until a signal. SIGTERM drains: no new requests; running jobs go on until
        they end (StopEgress, the room closing, a limit) or ``drain_timeout`` passes. A
        second SIGTERM, or SIGINT, stops every job now, each output finalised. Then exit."""
        await self.start()
        term, now = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: (now if term.is_set() else term).set())
        loop.add_signal_handler(signal.SIGINT, now.set)
        loop.add_signal_handler(signal.SIGUSR1, _log_tasks)
        try:
            waits = [asyncio.create_task(term.wait()), asyncio.create_task(now.wait())]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
            if not now.is_set():
                await self.drain(float(self.conf.drain_timeout) or None, interrupt=now)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.close()
            loop.remove_signal_handler(signal.SIGUSR1)

    async def drain(self, timeout: float | None = None, interrupt: asyncio.Event | None = None) -> None:
        await self._stop_accepting()
        await self.worker.drain(timeout, interrupt)

    async def _stop_accepting(self) -> None:
        if not self.worker.draining:
            self.worker.stop_accepting()
            await self.internal.stop_accepting()

    async def close(self, drain_timeout: float = 60.0) -> None:
        await self._stop_accepting()
        await self.worker.close(drain_timeout)
        await close_service(self._handlers, (self.health, self.prom, self.template), (self.internal, self.io),
                            self.bus)

    # -- the worker's hooks --------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        return self.io.healthy

    async def create(self, info: lk.EgressInfo) -> None:
        await self.io.create_egress(info)

    async def relay(self, info: lk.EgressInfo) -> None:
        await self.io.update_egress(info)

    async def track(self, job_id: str) -> None:
        if job_id in self._handlers:
            return
        handler = EgressHandlerServer(self.bus, job_id, stop_egress=self._stop_egress,
                                      update_stream=self._update_stream)
        self._handlers[job_id] = handler
        try:
            await handler.start()
        except RuntimeError:
            if self._handlers.get(job_id) is handler:
                raise
            # untracked while it was starting: nothing more to answer for

    async def untrack(self, job_id: str) -> None:
        handler = self._handlers.pop(job_id, None)
        if handler is not None:
            await handler.close()

    # -- RPCs ----------------------------------------------------------------------------
    def _spec(self, req: StartEgressRequest) -> EgressSpec:
        spec = self._specs.pop(req.egress_id, None)
        if spec is None:
            spec = spec_from_request(req, self.conf.output_roots)
        return spec

    def _affinity(self, req: StartEgressRequest) -> float:
        try:
            spec = self._spec(req)
        except JobError:
            return self.worker.affinity(None)  # claim it so that the caller gets the error
        self._specs[req.egress_id] = spec  # validated once: the start that follows takes it
        while len(self._specs) > SPEC_CACHE:
            self._specs.popitem(last=False)
        return self.worker.affinity(spec)

    async def _start_egress(self, req: StartEgressRequest, ctx: RequestContext) -> lk.EgressInfo:
        try:
            spec = self._spec(req)
            return await self.worker.submit(spec, initial_info(spec))  # type: ignore[return-value]
        except JobError as e:
            raise RpcError(e.code, str(e)) from None

    async def _stop_egress(self, req: lk.StopEgressRequest, ctx: RequestContext) -> lk.EgressInfo:
        try:
            return await self.worker.stop(req.egress_id, "StopEgress API")  # type: ignore[return-value]
        except JobError as e:
            raise RpcError(e.code, str(e)) from None

    async def _update_stream(self, req: lk.UpdateStreamRequest, ctx: RequestContext) -> lk.EgressInfo:
        try:
            return await self.worker.request(req.egress_id, "update_stream",  # type: ignore[return-value]
                                             {"add": list(req.add_output_urls),
                                              "remove": list(req.remove_output_urls)})
        except JobError as e:
            raise RpcError(e.code, str(e)) from None

    def _health(self) -> dict[str, Any]:
        return status_body(self.admission.available_cpu(), self.worker.describe_jobs())


def _log_tasks() -> None:
    """SIGUSR1: log every asyncio task and where it waits (a hung shutdown, a stuck job)."""
    import io

    for t in asyncio.all_tasks():
        buf = io.StringIO()
        t.print_stack(limit=8, file=buf)
        log.warning("task %s:\n%s", t.get_name(), buf.getvalue())
