"""The ingress service's front door for RTMP: listeners, the stream key checked with
livekit-server before a publish is accepted, the session's IngressState reported, and the
IngressHandler topic of a live session.

A publish walks: lkmedia.rtmp.RtmpServer (``publish`` with a key) -> ``check_rtmp``:
IOInfo.GetIngressInfo{stream_key} (an unknown key is refused and nothing is reported, as
in Go) -> ingress.spec.spec_from_info (disabled, wrong input type, invalid options) and
admission: a refusal after GetIngressInfo is reported as ENDPOINT_ERROR, as the Go ingress
does -> BUFFERING reported, ``NetStream.Publish.Start`` -> ``run_session(spec, session,
report)`` runs the media (the job's part) and reports PUBLISHING -> the end reported:
INACTIVE (the ingress can be pushed to again), or ERROR with the reason.

UpdateIngress / DeleteIngress for a live session arrive on its IngressHandler topic (the
ingress ID): the session is ended and its state returned, as the Go ingress does.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from livekit.protocol import ingress as lk

from ..ingress import state as states
from ..ingress.errors import IngressError, already_live
from ..ingress.spec import IngressSpec, new_resource_id, spec_from_info
from ..redact import redact_key
from ..rpc import RedisBus, RequestContext, RpcError
from ..rpc.egress import IOInfoClient
from ..rpc.ingress import IngressHandlerServer
from ..rpc.messages import ingress_info_of
from ..rtmp import Limits, PublishRefused, PublishRequest, RtmpServer, RtmpSession, tls_context
from .ingress_config import IngressConfig

log = logging.getLogger("lkmedia.ingress")

Report = Callable[[lk.IngressState], Awaitable[None]]
#: Runs an accepted session's media until it ends; returns "" or the error it ended with.
SessionRunner = Callable[[IngressSpec, RtmpSession, Report], Awaitable[str]]
#: Admission: None to take the session, else why not (a Go-style "server capacity exceeded").
Admit = Callable[[IngressSpec], IngressError | None]
REJECTED = "NetStream.Publish.Rejected"
GET_INFO_TIMEOUT = 3.0  # the Go ingress's default psrpc client timeout


@dataclass
class LiveSession:
    spec: IngressSpec
    state: lk.IngressState
    rtmp: RtmpSession | None = None
    handler: IngressHandlerServer | None = None
    end_reason: str = ""  # why the service ended it (UpdateIngress, DeleteIngress)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class IngressService:
    def __init__(self, conf: IngressConfig, run_session: SessionRunner, *, admit: Admit | None = None,
                 host: str = "0.0.0.0", limits: Limits | None = None, bus: RedisBus | None = None,
                 io: IOInfoClient | None = None) -> None:
        """``bus`` and ``io``: the service's, when it has them (else the front door opens its own)."""
        self.conf, self.run_session, self.admit = conf, run_session, admit
        self.host, self.limits = host, limits or Limits()
        self.bus, self.io = bus, io
        self._owns_bus = bus is None
        self.servers: list[RtmpServer] = []
        self.live: dict[str, LiveSession] = {}  # by ingress ID

    async def start(self) -> None:
        if self._owns_bus:
            r = self.conf.redis
            assert r is not None, "ingress config without redis"
            self.bus = RedisBus(r.address, username=r.username or None, password=r.password or None, db=r.db)
            await self.bus.start()
            self.io = IOInfoClient(self.bus)
            await self.io.start()
        if self.conf.rtmp_port > 0:
            self.servers.append(RtmpServer(self.check_rtmp, self._on_session, host=self.host,
                                           port=self.conf.rtmp_port, limits=self.limits))
        rtmps = self.conf.rtmps
        if rtmps.port > 0:
            self.servers.append(RtmpServer(self.check_rtmp, self._on_session, host=self.host, port=rtmps.port,
                                           ssl_context=tls_context(rtmps.cert_file, rtmps.key_file),
                                           limits=self.limits))
        for s in self.servers:
            await s.start()

    async def close(self) -> None:
        for s in self.servers:
            await s.close()
        for live in list(self.live.values()):
            if live.handler is not None:
                await live.handler.close()
        if self._owns_bus and self.io is not None:
            await self.io.close()
        if self._owns_bus and self.bus is not None:
            await self.bus.close()

    async def __aenter__(self) -> IngressService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- before the publish is answered ---------------------------------------------------
    async def check_rtmp(self, req: PublishRequest) -> IngressSpec:
        """The RtmpServer's validator: an IngressSpec to accept, PublishRefused to refuse."""
        assert self.io is not None
        key = redact_key(req.stream_key)
        try:
            res = await asyncio.wait_for(self.io.get_ingress_info(stream_key=req.stream_key), GET_INFO_TIMEOUT)
        except RpcError as e:
            log.info("ingress: key %s refused: %s", key, e.message)
            raise PublishRefused(e.message if e.code == "not_found" else "the stream key could not be checked") from None
        except TimeoutError:
            raise PublishRefused("the stream key could not be checked in time") from None
        info = ingress_info_of(res)
        if info is None or not info.ingress_id:
            raise PublishRefused("ingress not found")
        if info.ingress_id in self.live:  # a second publisher on a live key: the first one keeps it
            raise PublishRefused(str(already_live()), REJECTED)
        resource_id = new_resource_id("rtmp")
        state = states.buffering(resource_id)
        try:
            spec = spec_from_info(info, "rtmp", resource_id)
            spec.transcode = not self.conf.rtmp_passthrough
            refusal = self.admit(spec) if self.admit is not None else None
            if refusal is not None:
                raise refusal
        except IngressError as e:
            log.warning("ingress %s: publish with key %s refused: %s", info.ingress_id, key, e)
            states.set_status(state, states.S.ENDPOINT_ERROR, str(e))
            await self._report(info.ingress_id, state)
            raise PublishRefused(str(e), REJECTED) from None
        self.live[spec.ingress_id] = LiveSession(spec, state)
        try:
            await self._report(spec.ingress_id, state)
        except BaseException:  # cancelled (the check took too long): no session will follow
            self.live.pop(spec.ingress_id, None)
            raise
        return spec

    async def _report(self, ingress_id: str, state: lk.IngressState) -> None:
        assert self.io is not None
        try:
            await self.io.update_ingress_state(ingress_id, state)
        except RpcError as e:
            log.warning("ingress %s: state %s not stored: %s", ingress_id,
                        lk.IngressState.Status.Name(state.status), e)

    # -- the session ------------------------------------------------------------------------
    async def _on_session(self, session: RtmpSession) -> None:
        spec: IngressSpec = session.accepted
        live = self.live[spec.ingress_id]
        live.rtmp = session
        assert self.bus is not None
        live.handler = IngressHandlerServer(self.bus, spec.ingress_id, update=self._on_update, delete=self._on_delete)
        error = ""
        try:
            await live.handler.start()

            async def report(state: lk.IngressState) -> None:
                async with live.lock:
                    if live.state.status in states.FINAL and live.state.ended_at:
                        return
                    if state.updated_at and state.updated_at <= live.state.updated_at:
                        return  # sent already (the BUFFERING the front door reported)
                    live.state = state
                    if state.status not in states.FINAL or live.end_reason != "DeleteIngress":
                        await self._report(spec.ingress_id, state)

            error = await self.run_session(spec, session, report)
        except Exception as e:
            log.exception("ingress %s: session failed", spec.ingress_id)
            error = f"internal error ({type(e).__name__})"
        finally:
            # a stalled or broken stream ends ERROR with its reason; a publisher that just went
            # away ends the session as its end of stream, INACTIVE, as in Go
            error = error or (session.error if not live.end_reason else "")
            async with live.lock:
                if not (live.state.status in states.FINAL and live.state.ended_at):  # the job's end is reported
                    live.state = states.ended(live.state, spec.reusable, error)
                    if live.end_reason != "DeleteIngress":  # a deleted ingress has nowhere to store it
                        await self._report(spec.ingress_id, live.state)
            with contextlib.suppress(Exception):
                await live.handler.close()
            self.live.pop(spec.ingress_id, None)
            log.info("ingress %s: session %s ended %s%s", spec.ingress_id, spec.resource_id,
                     lk.IngressState.Status.Name(live.state.status), f" ({error})" if error else "")

    async def _end_live(self, ingress_id: str, reason: str) -> lk.IngressState:
        live = self.live.get(ingress_id)
        if live is None:
            raise RpcError("not_found", "ingress not found")
        live.end_reason = reason
        if live.rtmp is not None:
            live.rtmp.close(f"ended by {reason}")
        state = states.ended(live.state, live.spec.reusable)
        return state

    async def _on_update(self, req: lk.UpdateIngressRequest, _ctx: RequestContext) -> lk.IngressState:
        return await self._end_live(req.ingress_id, "UpdateIngress")

    async def _on_delete(self, req: lk.DeleteIngressRequest, _ctx: RequestContext) -> lk.IngressState:
        return await self._end_live(req.ingress_id, "DeleteIngress")
