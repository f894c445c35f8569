"""The ingress service's WHIP front door on ``whip_port`` (lkmedia.ingress.whip's server and
sessions), for WHIP without transcoding (the WHIP default): the offer goes to livekit-server's
own WHIP endpoint, as the Go ingress's proxy mode does, so no media passes through lkmedia
and the session needs no job process.

A POST walks as an RTMP publish does: IOInfo.GetIngressInfo{stream_key} (unknown: 404, nothing
reported) -> spec_from_info (wrong input, disabled, invalid) and admission; a refusal after
GetIngressInfo is stored ENDPOINT_ERROR -> BUFFERING -> the offer proxied -> PUBLISHING ->
INACTIVE when the client DELETEs its resource, DeleteIngress / UpdateIngress arrive on the
ingress's IngressHandler topic, or the service stops. States change by lkmedia.ingress.state
and are stored in the order they were set.

WHIP with transcoding runs in a job process of its own (``transcode``, from the service:
lkmedia.service.ingress_node), as RTMP sessions do: after admission and BUFFERING, the job
answers the offer with aiortc, decodes and publishes; its states are stored by the service as
RTMP's are; the client's DELETE stops the job (``stop_transcode``). Without ``transcode``
such an offer is refused (501) and the refusal stored as ENDPOINT_ERROR.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from livekit.protocol import ingress as lk

from ..ingress import state as states
from ..ingress.errors import IngressError, already_live
from ..ingress.spec import IngressSpec, new_resource_id, spec_from_info
from ..ingress.whip import SDPFRAG, WhipAnswer, WhipRefused, WhipServer, WhipSessions, _Resource, sdpfrag
from ..redact import redact_key
from ..rpc import RedisBus, RequestContext, RpcError
from ..rpc.egress import IOInfoClient
from ..rpc.ingress import IngressHandlerServer
from ..rpc.messages import (
    DeleteWHIPResourceRequest,
    ICERestartWHIPResourceRequest,
    ICERestartWHIPResourceResponse,
    WHIPRTCConnectionNotifyRequest,
    ingress_info_of,
)
from .ingress_config import IngressConfig

log = logging.getLogger("lkmedia.ingress")
GET_INFO_TIMEOUT = 3.0
_STATUS = {"invalid_argument": 400, "failed_precondition": 403, "already_exists": 409, "resource_exhausted": 503}
#: (spec, its IngressInfo with the BUFFERING state stored, the offer) -> (the SDP answer, set when it has ended)
Transcode = Callable[[IngressSpec, lk.IngressInfo, str], Awaitable[tuple[str, asyncio.Event]]]


class WhipFrontDoor:
    def __init__(self, conf: IngressConfig, bus: RedisBus, io: IOInfoClient, *,
                 admit: Callable[[IngressSpec], IngressError | None], available: Callable[[], bool],
                 started: Callable[[str], None], ended: Callable[[str], None], host: str = "0.0.0.0",
                 transcode: Transcode | None = None,
                 stop_transcode: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.conf, self.bus, self.io = conf, bus, io
        self._admit, self._started, self._ended = admit, started, ended
        self._run_transcode, self._stop_transcode = transcode, stop_transcode
        self.sessions = WhipSessions(conf.ws_url, conf.api_key, conf.api_secret, self._lookup,
                                     on_state=self._on_state,
                                     transcoder=self._transcode if transcode is not None else None)
        self._pending: dict[str, tuple[IngressSpec, lk.IngressState]] = {}  # transcoding, by ingress ID
        self._resource_handlers: dict[str, IngressHandlerServer] = {}  # transcoding: the WHIP resource RPCs
        self.server = WhipServer(conf.whip_port, self._publish, self.sessions.delete, host=host,
                                 available=available, patch=self.sessions.patch)
        self.live: dict[str, lk.IngressState] = {}  # by ingress ID: the state last set
        self._handlers: dict[str, IngressHandlerServer] = {}
        self._lock = asyncio.Lock()  # states are stored one at a time, in the order they were set
        self._tasks: set[asyncio.Task[None]] = set()
        self._offering: dict[str, str] = {}  # stream key -> ingress ID, while its offer is answered

    async def start(self) -> None:
        await self.server.start()

    async def close(self) -> None:
        await self.server.stop()
        await self.sessions.close()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for h in [*self._handlers.values(), *self._resource_handlers.values()]:
            await h.close()
        self._handlers.clear()
        self._resource_handlers.clear()

    # -- a new offer -------------------------------------------------------------------------------
    async def _publish(self, app: str, stream_key: str, offer: str) -> WhipAnswer:
        if stream_key in self._offering:  # another offer for this key is being answered
            raise WhipRefused(409, str(already_live()))
        try:
            answer = await self.sessions.publish(app, stream_key, offer)
            await self._watch_sfu(self._offering.get(stream_key, ""), answer.resource_id)
            await self._serve_resource(self._offering.get(stream_key, ""), stream_key, answer.resource_id)
            return answer
        except Exception as e:  # after the lookup: the session that began ends ERROR with the reason
            ingress_id = self._offering.get(stream_key, "")
            pending = self._pending.pop(ingress_id, None)
            if pending is not None:  # refused before its job was launched
                await self._store(ingress_id, states.ended(pending[1], True, str(e) or type(e).__name__))
            state = self.live.get(ingress_id)
            if state is not None:
                self.live[ingress_id] = end = states.ended(state, True, str(e) or type(e).__name__)
                await self._store(ingress_id, end, final=True)
            raise
        finally:
            self._offering.pop(stream_key, None)

    async def _lookup(self, stream_key: str) -> lk.IngressInfo:
        try:
            res = await asyncio.wait_for(self.io.get_ingress_info(stream_key=stream_key), GET_INFO_TIMEOUT)
        except RpcError as e:
            log.info("whip: key %s refused: %s", redact_key(stream_key), e.message)
            raise WhipRefused(404 if e.code == "not_found" else 503,
                              e.message if e.code == "not_found" else "the stream key could not be checked") from None
        except TimeoutError:
            raise WhipRefused(503, "the stream key could not be checked in time") from None
        info = ingress_info_of(res)
        if info is None or not info.ingress_id:
            raise WhipRefused(404, "ingress not found")
        if info.ingress_id in self.live:
            raise WhipRefused(409, str(already_live()))
        resource_id = new_resource_id("whip")
        state = states.buffering(resource_id)
        try:
            spec = spec_from_info(info, "whip", resource_id)
            if spec.transcode and self._run_transcode is None:
                raise IngressError("WHIP with transcoding is not served by this lkmedia ingress", "unimplemented")
            refusal = self._admit(spec)
            if refusal is not None:
                raise refusal
        except IngressError as e:
            states.set_status(state, states.S.ENDPOINT_ERROR, str(e))
            await self._store(info.ingress_id, state)
            raise WhipRefused(501 if e.code == "unimplemented" else _STATUS.get(e.code, 400), str(e)) from None
        if spec.transcode:  # a job process answers (_transcode); the service stores its states
            self._pending[info.ingress_id] = (spec, state)
            self._offering[stream_key] = info.ingress_id
            await self._store(info.ingress_id, state)
            out = lk.IngressInfo.FromString(info.SerializeToString())
            out.state.CopyFrom(state)
            return out
        self.live[info.ingress_id] = state
        self._offering[stream_key] = info.ingress_id
        handler = IngressHandlerServer(self.bus, info.ingress_id, update=self._on_end_rpc, delete=self._on_end_rpc)
        self._handlers[info.ingress_id] = handler
        await handler.start()
        self._started(spec.ingress_id)
        await self._store(info.ingress_id, state)
        out = lk.IngressInfo.FromString(info.SerializeToString())
        out.state.CopyFrom(state)
        return out  # (it keeps its stream key: the client's DELETE names it)

    async def _transcode(self, res: _Resource, offer: str) -> str:
        """WHIP with transcoding: the session's job process answers the offer."""
        assert self._run_transcode is not None and self._stop_transcode is not None
        spec, state = self._pending.pop(res.info.ingress_id)
        info = lk.IngressInfo.FromString(spec.info.SerializeToString())
        info.state.CopyFrom(state)
        try:
            answer, ended = await self._run_transcode(spec, info, offer)
        except IngressError as e:  # not launched (no capacity, draining): nothing else stores it
            states.set_status(state, states.S.ENDPOINT_ERROR, str(e))
            await self._store(info.ingress_id, state)
            raise WhipRefused(_STATUS.get(e.code, 503), str(e)) from None
        stop = self._stop_transcode
        res.end_remote = lambda: stop(spec.ingress_id)
        self._spawn(self._forget(res, ended))
        return answer

    async def _forget(self, res: _Resource, ended: asyncio.Event) -> None:
        """A transcoding session's resource goes once its job has ended (for any reason)."""
        await ended.wait()
        res.ended.set()
        self.sessions.resources.pop(res.resource_id, None)
        handler = self._resource_handlers.pop(res.resource_id, None)
        if handler is not None:
            await handler.close()

    async def _watch_sfu(self, ingress_id: str, resource_id: str) -> None:
        """livekit-server tells (WHIPRTCConnectionNotify on the participant's ID) when the
        proxied connection closes: a client that vanished without its DELETE ends the session."""
        res = self.sessions.resources.get(resource_id)
        handler = self._handlers.get(ingress_id)
        if res is None or handler is None or not res.sfu_location:
            return
        participant_id = res.sfu_location.rstrip("/").rsplit("/", 1)[-1]

        async def notify(req: WHIPRTCConnectionNotifyRequest, _ctx: RequestContext) -> None:
            if req.closed and resource_id in self.sessions.resources:
                log.info("ingress %s: livekit-server closed the WHIP connection of %s", ingress_id,
                         req.participant_id)
                self._spawn(self.sessions.end(res))

        await handler.serve_whip_notify(participant_id, notify)

    async def _serve_resource(self, ingress_id: str, stream_key: str, resource_id: str) -> None:
        """IngressHandler.DeleteWHIPResource / ICERestartWHIPResource on the resource's topic,
        as the Go ingress serves them (its WHIP front reaches sessions that way): the same
        as the client's DELETE and PATCH here."""
        handler = self._handlers.get(ingress_id)
        if handler is None:  # a transcoding session: the job's handler is the service's; these are ours
            handler = self._resource_handlers[resource_id] = IngressHandlerServer(
                self.bus, ingress_id, update=self._on_end_rpc, delete=self._on_end_rpc)

        async def delete(req: DeleteWHIPResourceRequest, _ctx: RequestContext) -> None:
            if req.stream_key != stream_key:
                raise RpcError("not_found", "no such WHIP session")
            self._spawn(self.sessions.delete(stream_key, resource_id))  # (ending closes this handler)

        async def ice_restart(req: ICERestartWHIPResourceRequest, _ctx: RequestContext
                              ) -> ICERestartWHIPResourceResponse:
            if req.stream_key != stream_key:
                raise RpcError("not_found", "no such WHIP session")
            frag = req.raw_trickle_ice_sdpfrag or sdpfrag(req.user_fragment, req.password, list(req.candidates))
            try:
                out = await self.sessions.patch(stream_key, resource_id, req.if_match or "*", SDPFRAG, frag)
            except WhipRefused as e:
                raise RpcError("invalid_argument" if e.status < 500 else "unavailable", str(e)) from None
            return ICERestartWHIPResourceResponse(trickle_ice_sdpfrag=out.body, etag=out.etag)

        await handler.serve_whip(resource_id, delete=delete, ice_restart=ice_restart)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- its states --------------------------------------------------------------------------------
    def _on_state(self, info: lk.IngressInfo, reported: lk.IngressState) -> None:
        """WhipSessions' state changes, re-stamped by lkmedia.ingress.state and stored in order."""
        current = self.live.get(info.ingress_id)
        if current is None or (current.status in states.FINAL and current.ended_at):
            return
        if reported.resource_id and current.resource_id and reported.resource_id != current.resource_id:
            return  # a late word on the ingress's previous session: the current one goes on
        if reported.status in states.FINAL:
            new = states.ended(current, True, reported.error if reported.status == states.S.ENDPOINT_ERROR else "")
        else:
            new = lk.IngressState.FromString(current.SerializeToString())
            states.set_status(new, reported.status)
        self.live[info.ingress_id] = new
        self._spawn(self._store(info.ingress_id, new, final=new.status in states.FINAL))

    async def _store(self, ingress_id: str, state: lk.IngressState, final: bool = False) -> None:
        async with self._lock:
            if not final or self.live.get(ingress_id) is not None:
                try:
                    await self.io.update_ingress_state(ingress_id, state)
                except RpcError as e:
                    log.warning("ingress %s: state %s not stored: %s", ingress_id,
                                lk.IngressState.Status.Name(state.status), e)
            if final:
                self.live.pop(ingress_id, None)
                handler = self._handlers.pop(ingress_id, None)
                if handler is not None:
                    await handler.close()
                self._ended(ingress_id)
                log.info("ingress %s: WHIP session %s ended %s", ingress_id, state.resource_id,
                         lk.IngressState.Status.Name(state.status))

    async def _on_end_rpc(self, req: lk.UpdateIngressRequest | lk.DeleteIngressRequest,
                          _ctx: RequestContext) -> lk.IngressState:
        state = self.live.get(req.ingress_id)
        res = next((r for r in list(self.sessions.resources.values()) if r.info.ingress_id == req.ingress_id), None)
        if state is None or res is None:
            raise RpcError("not_found", "ingress not found")
        out = states.ended(state, True)
        self._spawn(self.sessions.end(res))  # (not from inside its handler, which ending closes)
        return out

