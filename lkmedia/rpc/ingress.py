"""Typed psrpc endpoints of LiveKit ingress, as livekit-server v1.13.5 expects them
(method flags of protocol ``rpc/ingress.psrpc.go``; messages in protos/ingress.proto).

* ``IngressInternalServer``: StartIngress (AFFINITY, no topic: livekit-server sends it for
  URL inputs only) and ListActiveIngress (MULTI, topic ``""``).
* ``IngressHandlerServer``: one per live session, topic = ingress ID: UpdateIngress and
  DeleteIngress (QUEUE: lock + claim), answered with the session's IngressState after it is
  ended. For a WHIP session, also DeleteWHIPResource and ICERestartWHIPResource on topic =
  its resource ID, and WHIPRTCConnectionNotify (QUEUE without a claim) on the participant ID
  for the WHIP proxy mode.

The IOInfo calls an ingress makes (GetIngressInfo, CreateIngress, UpdateIngressState) are
lkmedia.rpc.egress.IOInfoClient's, shared with the egress.
"""
from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable

from google.protobuf.empty_pb2 import Empty
from livekit.protocol import ingress as lk

from .bus import RedisBus
from .messages import (
    DeleteWHIPResourceRequest,
    ICERestartWHIPResourceRequest,
    ICERestartWHIPResourceResponse,
    IngressSession,
    ListActiveIngressRequest,
    ListActiveIngressResponse,
    StartIngressRequest,
    WHIPRTCConnectionNotifyRequest,
)
from .server import RequestContext, Routing, RpcServer
from .wire import RpcError

INGRESS_INTERNAL = "IngressInternal"
INGRESS_HANDLER = "IngressHandler"

StartIngressFn = Callable[[StartIngressRequest, RequestContext], Awaitable[lk.IngressInfo]]
AffinityFn = Callable[[StartIngressRequest], float | Awaitable[float]]
Sessions = Iterable[tuple[str, str]]  # (ingress_id, resource_id)
ListSessionsFn = Callable[[], Sessions | Awaitable[Sessions]]
UpdateFn = Callable[[lk.UpdateIngressRequest, RequestContext], Awaitable[lk.IngressState]]
DeleteFn = Callable[[lk.DeleteIngressRequest, RequestContext], Awaitable[lk.IngressState]]
DeleteWhipFn = Callable[[DeleteWHIPResourceRequest, RequestContext], Awaitable[None]]
IceRestartFn = Callable[[ICERestartWHIPResourceRequest, RequestContext], Awaitable[ICERestartWHIPResourceResponse]]
NotifyFn = Callable[[WHIPRTCConnectionNotifyRequest, RequestContext], Awaitable[None]]


class IngressInternalServer:
    """Takes URL-pull StartIngress from livekit-server. ``affinity(req)``: the Go ingress
    offers 1 when it can take the session and stays silent (-1) when it cannot."""

    def __init__(self, bus: RedisBus, *, start_ingress: StartIngressFn, affinity: AffinityFn,
                 list_sessions: ListSessionsFn, server_id: str | None = None) -> None:
        self.rpc = RpcServer(bus, INGRESS_INTERNAL, server_id=server_id)
        self._start, self._affinity, self._list = start_ingress, affinity, list_sessions

    @property
    def server_id(self) -> str:
        return self.rpc.server_id

    async def start(self) -> None:
        await self.rpc.register("ListActiveIngress", self._list_active, ListActiveIngressRequest,
                                topic="", routing=Routing.MULTI)
        await self.rpc.register("StartIngress", self._start, StartIngressRequest, routing=Routing.AFFINITY,
                                affinity=self._affinity)

    async def stop_accepting(self) -> None:
        """No new StartIngress from now on (shutdown); ListActiveIngress keeps answering."""
        await self.rpc.deregister("StartIngress", drain_timeout=10.0)

    async def close(self) -> None:
        await self.rpc.close()

    async def _list_active(self, _req: ListActiveIngressRequest, _ctx: RequestContext) -> ListActiveIngressResponse:
        sessions = self._list()
        if inspect.isawaitable(sessions):
            sessions = await sessions
        pairs = list(sessions)
        return ListActiveIngressResponse(
            ingress_ids=[i for i, _ in pairs],
            ingress_sessions=[IngressSession(ingress_id=i, resource_id=r) for i, r in pairs])


class IngressHandlerServer:
    """Control of one live session: UpdateIngress / DeleteIngress on topic = ingress ID."""

    def __init__(self, bus: RedisBus, ingress_id: str, *, update: UpdateFn, delete: DeleteFn,
                 server_id: str | None = None) -> None:
        if not ingress_id:
            raise ValueError("ingress_id must not be empty")
        self.ingress_id = ingress_id
        self.rpc = RpcServer(bus, INGRESS_HANDLER, server_id=server_id)
        self._update, self._delete = update, delete

    async def start(self) -> None:
        await self.rpc.register("UpdateIngress", self._on_update, lk.UpdateIngressRequest, topic=self.ingress_id)
        await self.rpc.register("DeleteIngress", self._on_delete, lk.DeleteIngressRequest, topic=self.ingress_id)

    async def serve_whip(self, resource_id: str, *, delete: DeleteWhipFn, ice_restart: IceRestartFn) -> None:
        """The WHIP resource methods of this session (topic = its resource ID)."""

        async def on_delete(req: DeleteWHIPResourceRequest, ctx: RequestContext) -> Empty:
            await delete(req, ctx)
            return Empty()

        await self.rpc.register("DeleteWHIPResource", on_delete, DeleteWHIPResourceRequest, topic=resource_id)
        await self.rpc.register("ICERestartWHIPResource", ice_restart, ICERestartWHIPResourceRequest,
                                topic=resource_id)

    async def serve_whip_notify(self, participant_id: str, notify: NotifyFn) -> None:
        """livekit-server's reports on a proxied WHIP connection (single server, no claim)."""

        async def on_notify(req: WHIPRTCConnectionNotifyRequest, ctx: RequestContext) -> Empty:
            await notify(req, ctx)
            return Empty()

        await self.rpc.register("WHIPRTCConnectionNotify", on_notify, WHIPRTCConnectionNotifyRequest,
                                topic=participant_id, routing=Routing.QUEUE, require_claim=False)

    async def close(self, drain_timeout: float = 5.0) -> None:
        """Deregisters every topic; safe from inside one of its handlers."""
        await self.rpc.close(drain_timeout)

    async def _on_update(self, req: lk.UpdateIngressRequest, ctx: RequestContext) -> lk.IngressState:
        if req.ingress_id and req.ingress_id != self.ingress_id:
            raise RpcError("invalid_argument", f"UpdateIngress for {req.ingress_id} reached {self.ingress_id}")
        return await self._update(req, ctx)

    async def _on_delete(self, req: lk.DeleteIngressRequest, ctx: RequestContext) -> lk.IngressState:
        if req.ingress_id and req.ingress_id != self.ingress_id:
            raise RpcError("invalid_argument", f"DeleteIngress for {req.ingress_id} reached {self.ingress_id}")
        return await self._delete(req, ctx)
