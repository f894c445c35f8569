"""``lkmedia ingress``: the drop-in ingress service livekit-server drives over Redis.

A thin layer over the worker core (lkmedia.worker), as lkmedia.service.egress is for egress:
one job process per session (lkmedia.ingress.runner), admitted at once or refused by the Go
ingress's CPU rule (lkmedia.ingress.admission), never queued. It serves:

* the RTMP front door (lkmedia.service.ingress: key checked with IOInfo.GetIngressInfo,
  BUFFERING reported) and the loopback relay that carries each publish to its job process
  (lkmedia.service.ingress_relay);
* IngressInternal: StartIngress for URL pulls (affinity 1 or -1, then IOInfo.CreateIngress,
  BUFFERING, the session; COMPLETE at its end) and ListActiveIngress;
* IngressHandler on each live session's ingress ID: UpdateIngress / DeleteIngress end it;
* health (``/``, ``/availability``) and the Go ingress's Prometheus series.

Every IngressState a job sends is stored through IOInfo.UpdateIngressState by this process
alone. A job process that dies ends its ingress ERROR with the reason; the service serves on.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import tempfile
from typing import Any

from livekit.protocol import ingress as lk

from ..ingress import state as states
from ..ingress.admission import IngressAdmission
from ..ingress.errors import IngressError, no_capacity
from ..ingress.kind import IngressKind
from ..ingress.spec import IngressSpec, spec_from_info
from ..ingress.whip import WhipRefused
from ..rpc import RedisBus, RequestContext, RpcError
from ..rpc.egress import IOInfoClient
from ..rpc.ingress import IngressHandlerServer, IngressInternalServer
from ..rpc.messages import StartIngressRequest, ingress_info_of
from ..rtmp import RtmpSession
from ..worker.kind import JobError
from ..worker.monitor import Action, KillPolicy
from ..worker.sampler import Sample
from ..worker.supervisor import Liveness, Logging
from ..worker.worker import Worker, WorkerSettings
from .ingress import IngressService, Report
from .ingress_config import IngressConfig
from .ingress_relay import FlvRelay
from .ingress_stats import IngressHealth, IngressMetrics
from .ingress_whip import WhipFrontDoor
from .metrics import MetricsServer
from .shutdown import close_service

log = logging.getLogger("lkmedia.ingress")


class _NoKill(KillPolicy):
    """The Go ingress never stops a session for the CPU or memory it uses."""

    def __init__(self) -> None:
        pass

    def observe(self, sample: Sample, allowed: Any, starting: bool = False) -> list[Action]:
        return []


class IngressNode:
    def __init__(self, conf: IngressConfig, *, tmp_dir: str | None = None, host: str = "0.0.0.0") -> None:
        self.conf = conf
        self.node_id = conf.node_id or f"NI_{os.getpid()}"
        r = conf.redis
        if r is None or not r.address:
            raise ValueError("redis.address is required: livekit-server reaches ingress through Redis")
        self.bus = RedisBus(r.address, username=r.username or None, password=r.password or None, db=r.db)
        self.io = IOInfoClient(self.bus)
        self.kind = IngressKind(conf)
        self.admission = IngressAdmission(conf.cpu_cost.min_idle_ratio)
        self.metrics = IngressMetrics(self.node_id, can_accept=self.can_accept)
        root = logging.getLogger()
        settings = WorkerSettings(
            node_id=self.node_id, tmp_dir=tmp_dir or os.path.join(tempfile.gettempdir(), "lkmedia-ingress"),
            queue=False, liveness=Liveness(),
            logs=Logging(logging.getLevelName(root.getEffectiveLevel()).lower(),
                         any(type(h.formatter).__name__ == "JsonFormatter" for h in root.handlers)))
        self.worker = Worker(self.kind, settings, redis=self.bus.redis, hooks=self, admission=self.admission,
                             policy=_NoKill(), metrics=self.metrics)
        self.flv_relay = FlvRelay(conf.http_relay_port)
        self.front = IngressService(conf, self._run_rtmp, admit=self._admit, host=host, bus=self.bus, io=self.io)
        self.whip = (WhipFrontDoor(conf, self.bus, self.io, admit=self._admit, available=self.can_accept,
                                   started=lambda _id: self.metrics.request_started("whip:bypass"),
                                   ended=lambda _id: self.metrics.request_ended("whip:bypass"), host=host,
                                   transcode=self._run_whip, stop_transcode=self._stop_whip)
                     if conf.whip_port > 0 else None)
        self.internal = IngressInternalServer(self.bus, start_ingress=self._start_ingress, affinity=self._affinity,
                                              list_sessions=self._sessions)
        self.health = IngressHealth(conf.health_port, self.can_accept) if conf.health_port else None
        self.prom = MetricsServer(self.metrics, conf.prometheus_port) if conf.prometheus_port else None
        self._handlers: dict[str, IngressHandlerServer] = {}  # URL pulls' (the front door has RTMP's)
        self._ended: dict[str, asyncio.Event] = {}
        self._deleted: set[str] = set()
        self._reports: dict[str, Report] = {}  # RTMP sessions: the front door's reporting

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.bus.start()
        await self.io.start()
        await self.worker.start()
        await self.flv_relay.start()
        await self.front.start()
        if self.whip is not None:
            await self.whip.start()
        await self.internal.start()
        for srv in (self.health, self.prom):
            if srv is not None:
                await srv.start()
        log.info("ingress service %s ready (redis %s, rtmp %s)", self.node_id, self.bus.address,
                 self.conf.rtmp_port if self.conf.rtmp_port > 0 else "off")

    async def run(self) -> None:
        """Serve until a signal. SIGTERM drains: no new sessions; live ones go on until they
        end. A second SIGTERM, or SIGINT, ends every session now. Then exit."""
        await self.start()
        term, now = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: (now if term.is_set() else term).set())
        loop.add_signal_handler(signal.SIGINT, now.set)
        try:
            waits = [asyncio.create_task(term.wait()), asyncio.create_task(now.wait())]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
            if not now.is_set():
                await self.drain(interrupt=now)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.close()

    async def drain(self, timeout: float | None = None, interrupt: asyncio.Event | None = None) -> None:
        await self._stop_accepting()
        await self.worker.drain(timeout, interrupt)

    async def _stop_accepting(self) -> None:
        if not self.worker.draining:
            self.worker.stop_accepting()
            await self.internal.stop_accepting()

    async def close(self) -> None:
        await self._stop_accepting()
        await self.front.close()  # RTMP publishers disconnected: their sessions end INACTIVE
        if self.whip is not None:
            await self.whip.close()  # WHIP sessions ended (their SFU resources deleted)
        await self.worker.close(drain_timeout=10.0)
        await close_service(self._handlers, (self.health, self.prom, self.flv_relay), (self.internal, self.io),
                            self.bus)

    # -- admission --------------------------------------------------------------------------------
    def can_accept(self) -> bool:
        """A session of the costliest input fits (Go ``CanAccept``: health and metrics)."""
        if self.worker.draining:
            return False
        cc = self.conf.cpu_cost
        top = max(cc.rtmp_cpu_cost, cc.whip_cpu_cost, cc.whip_bypass_transcoding_cpu_cost, cc.url_cpu_cost)
        return self.admission.cpu_usage()[1] > top

    def _admit(self, spec: IngressSpec) -> IngressError | None:
        if self.worker.draining or not self.admission.check(self.kind.costs(spec)).accept:
            return no_capacity()
        return None

    async def _launch(self, spec: IngressSpec, info: lk.IngressInfo) -> asyncio.Event:
        """Admit and start ``spec``'s job; the event is set once it has ended."""
        ended = self._ended[spec.ingress_id] = asyncio.Event()
        try:
            await self.worker.submit(spec, info)
        except JobError as e:
            self._ended.pop(spec.ingress_id, None)
            raise no_capacity() if e.code == "unavailable" else e from None
        return ended

    # -- RTMP: a session the front door accepted -------------------------------------------------
    async def _run_rtmp(self, spec: IngressSpec, session: RtmpSession, report: Report) -> str:
        live = self.front.live[spec.ingress_id]
        info = lk.IngressInfo.FromString(spec.info.SerializeToString())
        info.state.CopyFrom(live.state)
        ticket = self.flv_relay.offer(spec.resource_id, session)
        self.kind.relays[spec.resource_id] = (ticket.url, ticket.headers)
        self._reports[spec.ingress_id] = report
        try:
            ended = await self._launch(spec, info)
            sup = self.worker.jobs.get(spec.ingress_id)
            await ended.wait()
            final = sup.info if sup is not None else info
            assert isinstance(final, lk.IngressInfo)
            refused = self.flv_relay.refusals.get(spec.resource_id, "")
            return refused or (final.state.error if final.state.status == states.S.ENDPOINT_ERROR else "")
        except JobError as e:
            return str(e)
        finally:
            self._reports.pop(spec.ingress_id, None)
            self.kind.relays.pop(spec.resource_id, None)
            self.flv_relay.withdraw(spec.resource_id)

    # -- WHIP with transcoding: an offer the front door admitted ----------------------------------
    async def _run_whip(self, spec: IngressSpec, info: lk.IngressInfo, offer: str) -> tuple[str, asyncio.Event]:
        """Start the session's job, which answers ``offer`` with aiortc; the answer, and the
        event set once the job has ended."""
        self.kind.offers[spec.resource_id] = offer
        try:
            ended = await self._launch(spec, info)
            sup = self.worker.jobs.get(spec.ingress_id)
            try:
                reply = await self.worker.ask(spec.ingress_id, "answer", {})
            except JobError as e:  # the offer refused (the job ends ERROR with why), or the job died
                if e.code != "invalid_argument" and sup is not None:  # ended before it was asked: its last state
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(ended.wait(), 5)
                    final = sup.info
                    assert isinstance(final, lk.IngressInfo)
                    if final.state.status == states.S.ENDPOINT_ERROR and final.state.error:
                        raise WhipRefused(400, final.state.error) from None
                raise WhipRefused(400 if e.code == "invalid_argument" else 503, str(e)) from None
            return str(reply.get("sdp", "")), ended
        finally:
            self.kind.offers.pop(spec.resource_id, None)

    async def _stop_whip(self, ingress_id: str) -> None:
        """The client's DELETE (or the service closing): the session ends INACTIVE."""
        ended = self._ended.get(ingress_id)
        try:
            await self.worker.stop(ingress_id, "the WHIP client ended the session")
        except JobError:
            pass  # ended already
        if ended is not None:
            await ended.wait()

    # -- URL pull: IngressInternal ---------------------------------------------------------------
    def _url_spec(self, req: StartIngressRequest) -> IngressSpec:
        info = ingress_info_of(req)
        if info is None or not info.ingress_id:
            raise IngressError("StartIngress without an ingress", "invalid_argument")
        return spec_from_info(info, "url")

    def _affinity(self, req: StartIngressRequest) -> float:
        if self.worker.draining or not self.io.healthy:
            return -1.0
        try:
            spec = self._url_spec(req)
        except IngressError:
            return 1.0  # claimed, so that the caller gets the error
        return self.admission.affinity(self.kind.costs(spec))

    async def _start_ingress(self, req: StartIngressRequest, _ctx: RequestContext) -> lk.IngressInfo:
        try:
            spec = self._url_spec(req)
            info = lk.IngressInfo.FromString(spec.info.SerializeToString())
            info.state.CopyFrom(states.buffering(spec.resource_id))
            info.url = spec.url  # livekit-server stores it; the spec keeps it out of logs
            if self._admit(spec) is not None:
                raise no_capacity()
            await self._launch(spec, info)
        except JobError as e:
            raise RpcError(e.code, str(e)) from None
        log.info("ingress %s: URL pull %s started", spec.ingress_id, spec.resource_id)
        return info

    def _sessions(self) -> list[tuple[str, str]]:
        return [(jid, sup.spec.resource_id) for jid, sup in self.worker.jobs.items()]

    async def _end_job(self, ingress_id: str, reason: str) -> lk.IngressState:
        sup = self.worker.jobs.get(ingress_id)
        if sup is None:
            raise RpcError("not_found", "ingress not found")
        if reason == "DeleteIngress":
            self._deleted.add(ingress_id)
        try:
            info = await self.worker.stop(ingress_id, reason)
        except JobError as e:
            raise RpcError(e.code, str(e)) from None
        assert isinstance(info, lk.IngressInfo)
        return states.ended(info.state, reusable=sup.spec.reusable)

    async def _on_update(self, req: lk.UpdateIngressRequest, _ctx: RequestContext) -> lk.IngressState:
        return await self._end_job(req.ingress_id, "UpdateIngress")

    async def _on_delete(self, req: lk.DeleteIngressRequest, _ctx: RequestContext) -> lk.IngressState:
        return await self._end_job(req.ingress_id, "DeleteIngress")

    # -- the worker's hooks ------------------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        return self.io.healthy

    async def create(self, info: lk.IngressInfo) -> None:
        """A URL pull is stored by the ingress (livekit-server leaves it to it); RTMP and WHIP
        ingresses exist already."""
        if info.input_type != lk.IngressInput.URL_INPUT:
            return
        try:
            await self.io.create_ingress(info)
        except RpcError as e:
            if e.code != "unavailable":  # Go tolerates Unavailable (an older server)
                raise IngressError(f"the ingress could not be stored: {e.message}", e.code) from None

    async def relay(self, info: lk.IngressInfo) -> None:
        report = self._reports.get(info.ingress_id)
        if report is not None:  # an RTMP session: the front door reports its states
            await report(self._refused(info.state))
            return
        if info.ingress_id in self._deleted and info.state.status in states.FINAL:
            return  # a deleted ingress has nowhere to store it
        try:
            await self.io.update_ingress_state(info.ingress_id, info.state)
        except RpcError as e:
            log.warning("ingress %s: state %s not stored: %s", info.ingress_id,
                        lk.IngressState.Status.Name(info.state.status), e)

    def _refused(self, state: lk.IngressState) -> lk.IngressState:
        """An RTMP session whose publish the relay refused (a codec nothing decodes) ends ERROR
        with that reason, whatever its job made of the stream cut short."""
        why = self.flv_relay.refusals.get(state.resource_id, "")
        if not why or state.status not in states.FINAL:
            return state
        return states.ended(state, reusable=True, error=why)

    async def track(self, job_id: str) -> None:
        if job_id in self.front.live or job_id in self._handlers:
            return
        handler = IngressHandlerServer(self.bus, job_id, update=self._on_update, delete=self._on_delete)
        self._handlers[job_id] = handler
        await handler.start()

    async def untrack(self, job_id: str) -> None:
        handler = self._handlers.pop(job_id, None)
        if handler is not None:
            await handler.close()
        self._deleted.discard(job_id)
        ended = self._ended.pop(job_id, None)
        if ended is not None:
            ended.set()
