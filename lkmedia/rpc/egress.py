"""Typed psrpc endpoints of LiveKit egress, as livekit-server v1.13.5 expects them.

* ``EgressInternalServer``: StartEgress (AFFINITY, topic = cluster ID, ``""`` for OSS
  livekit-server) and ListActiveEgress (MULTI, topic ``""``).
* ``EgressHandlerServer``: one per running egress, topic = egress ID; StopEgress and
  UpdateStream (QUEUE: SETNX lock + claim). Registered when the egress starts and
  deregistered when it ends.
* ``IOInfoClient``: the calls egress (and ingress) make to livekit-server, with the Go
  egress's timeouts: CreateEgress 15 s, UpdateEgress 30 s retried with backoff
  (0.5 s doubling to 60 s) while the answer is ``deadline_exceeded``/``unavailable``.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from google.protobuf.empty_pb2 import Empty
from livekit.protocol import egress as lk_egress
from livekit.protocol import ingress as lk_ingress

from .bus import RedisBus
from .client import DEFAULT_SELECTION_TIMEOUT, RpcClient
from .messages import (
    GetEgressRequest,
    GetIngressInfoRequest,
    GetIngressInfoResponse,
    ListActiveEgressRequest,
    ListActiveEgressResponse,
    StartEgressRequest,
    UpdateIngressStateRequest,
    UpdateMetricsRequest,
)
from .server import RequestContext, Routing, RpcServer
from .wire import RpcError

log = logging.getLogger("lkmedia.rpc")

EGRESS_INTERNAL = "EgressInternal"
EGRESS_HANDLER = "EgressHandler"
IO_INFO = "IOInfo"

StartEgressFn = Callable[[StartEgressRequest, RequestContext], Awaitable[lk_egress.EgressInfo]]
AffinityFn = Callable[[StartEgressRequest], float | Awaitable[float]]
ListActiveFn = Callable[[], Iterable[str] | Awaitable[Iterable[str]]]
StopEgressFn = Callable[[lk_egress.StopEgressRequest, RequestContext], Awaitable[lk_egress.EgressInfo]]
UpdateStreamFn = Callable[[lk_egress.UpdateStreamRequest, RequestContext], Awaitable[lk_egress.EgressInfo]]


class EgressInternalServer:
    """Takes StartEgress jobs from livekit-server. ``affinity(req)``: < 0 declines, > 0
    offers (the Go egress answers 0.5 when idle, 1 when busy with room to spare)."""

    def __init__(self, bus: RedisBus, *, start_egress: StartEgressFn, affinity: AffinityFn,
                 list_active: ListActiveFn, cluster_id: str = "", server_id: str | None = None) -> None:
        self.rpc = RpcServer(bus, EGRESS_INTERNAL, server_id=server_id)
        self.cluster_id = cluster_id
        self._start, self._affinity, self._list = start_egress, affinity, list_active

    @property
    def server_id(self) -> str:
        return self.rpc.server_id

    async def start(self) -> None:
        await self.rpc.register("ListActiveEgress", self._list_active, ListActiveEgressRequest,
                                topic="", routing=Routing.MULTI)
        await self.rpc.register("StartEgress", self._start, StartEgressRequest, topic=self.cluster_id,
                                routing=Routing.AFFINITY, affinity=self._affinity)

    async def stop_accepting(self) -> None:
        """No new StartEgress from now on (shutdown); ListActiveEgress keeps answering."""
        await self.rpc.deregister("StartEgress", self.cluster_id, drain_timeout=20.0)

    async def close(self) -> None:
        await self.rpc.close()

    async def _list_active(self, _req: ListActiveEgressRequest, _ctx: RequestContext) -> ListActiveEgressResponse:
        ids = self._list()
        if inspect.isawaitable(ids):
            ids = await ids
        return ListActiveEgressResponse(egress_ids=list(ids))


class EgressHandlerServer:
    """Control of one running egress: StopEgress / UpdateStream on topic = egress ID."""

    def __init__(self, bus: RedisBus, egress_id: str, *, stop_egress: StopEgressFn,
                 update_stream: UpdateStreamFn | None = None, server_id: str | None = None) -> None:
        if not egress_id:
            raise ValueError("egress_id must not be empty")
        self.egress_id = egress_id
        self.rpc = RpcServer(bus, EGRESS_HANDLER, server_id=server_id)
        self._stop, self._update = stop_egress, update_stream

    async def start(self) -> None:
        await self.rpc.register("StopEgress", self._on_stop, lk_egress.StopEgressRequest, topic=self.egress_id)
        await self.rpc.register("UpdateStream", self._on_update, lk_egress.UpdateStreamRequest,
                                topic=self.egress_id)

    async def close(self, drain_timeout: float = 5.0) -> None:
        """Deregisters the topic; safe from inside a StopEgress handler."""
        await self.rpc.close(drain_timeout)

    async def _on_stop(self, req: lk_egress.StopEgressRequest, ctx: RequestContext) -> lk_egress.EgressInfo:
        if req.egress_id and req.egress_id != self.egress_id:
            raise RpcError("invalid_argument", f"StopEgress for {req.egress_id} reached {self.egress_id}")
        return await self._stop(req, ctx)

    async def _on_update(self, req: lk_egress.UpdateStreamRequest, ctx: RequestContext) -> lk_egress.EgressInfo:
        if self._update is None:
            raise RpcError("unimplemented", "UpdateStream is not supported for this egress")
        if req.egress_id and req.egress_id != self.egress_id:
            raise RpcError("invalid_argument", f"UpdateStream for {req.egress_id} reached {self.egress_id}")
        return await self._update(req, ctx)


def _retryable(e: RpcError) -> bool:
    return e.code in ("deadline_exceeded", "unavailable")


class IOInfoClient:
    """Calls into livekit-server's IOInfo service. ``healthy`` turns False while updates
    fail with a retryable error (the Go egress then answers affinity -1)."""

    def __init__(self, bus: RedisBus, *, create_timeout: float = 15.0, update_timeout: float = 30.0,
                 selection_timeout: float = DEFAULT_SELECTION_TIMEOUT, max_backoff: float = 60.0) -> None:
        self.rpc = RpcClient(bus, IO_INFO, selection_timeout=selection_timeout)
        self.create_timeout, self.update_timeout, self.max_backoff = create_timeout, update_timeout, max_backoff
        self._unhealthy_since: float | None = None

    async def start(self) -> None:
        await self.rpc.start()

    async def close(self) -> None:
        await self.rpc.close()

    @property
    def healthy(self) -> bool:
        return self._unhealthy_since is None

    def unhealthy_for(self) -> float:
        """Seconds since updates started failing (0 when healthy)."""
        return 0.0 if self._unhealthy_since is None else time.monotonic() - self._unhealthy_since

    async def create_egress(self, info: lk_egress.EgressInfo) -> None:
        """Stores the egress and makes livekit-server send egress_started. Call it before
        any update_egress for the same egress."""
        await self.rpc.call("CreateEgress", info, Empty, timeout=self.create_timeout)

    async def update_egress(self, info: lk_egress.EgressInfo, *, give_up_after: float = 600.0) -> None:
        """Stores an update (webhook egress_updated / egress_ended). Retries timeouts and
        no-response with backoff for up to ``give_up_after`` seconds; other errors raise."""
        start = time.monotonic()
        delay = 0.25
        while True:
            try:
                await self.rpc.call("UpdateEgress", info, Empty, timeout=self.update_timeout)
            except RpcError as e:
                if not _retryable(e) or time.monotonic() - start > give_up_after:
                    raise
                if self._unhealthy_since is None:
                    self._unhealthy_since = time.monotonic()
                    log.warning("rpc: IOInfo unhealthy (%s) updating %s; retrying", e, info.egress_id)
                delay = min(delay * 2, self.max_backoff)
                await asyncio.sleep(delay)
                continue
            if self._unhealthy_since is not None:
                log.info("rpc: IOInfo connection restored (%s)", info.egress_id)
                self._unhealthy_since = None
            return

    async def get_egress(self, egress_id: str) -> lk_egress.EgressInfo:
        return await self.rpc.call("GetEgress", GetEgressRequest(egress_id=egress_id), lk_egress.EgressInfo)

    async def list_egress(self, req: lk_egress.ListEgressRequest) -> lk_egress.ListEgressResponse:
        return await self.rpc.call("ListEgress", req, lk_egress.ListEgressResponse)

    async def update_metrics(self, info: lk_egress.EgressInfo, *, avg_cpu: float, max_cpu: float) -> None:
        req = UpdateMetricsRequest(info=info.SerializeToString(), avg_cpu_usage=avg_cpu, max_cpu_usage=max_cpu)
        await self.rpc.call("UpdateMetrics", req, Empty)

    async def get_ingress_info(self, *, ingress_id: str = "", stream_key: str = "") -> GetIngressInfoResponse:
        """livekit-server fills only ``info`` (parse it with messages.ingress_info_of)."""
        req = GetIngressInfoRequest(ingress_id=ingress_id, stream_key=stream_key)
        return await self.rpc.call("GetIngressInfo", req, GetIngressInfoResponse)

    async def create_ingress(self, info: lk_ingress.IngressInfo) -> None:
        """Stores a URL-pull ingress (livekit-server leaves that to the ingress)."""
        await self.rpc.call("CreateIngress", info, Empty, timeout=self.create_timeout)

    async def update_ingress_state(self, ingress_id: str, state: lk_ingress.IngressState) -> None:
        req = UpdateIngressStateRequest(ingress_id=ingress_id, state=state.SerializeToString())
        await self.rpc.call("UpdateIngressState", req, Empty)
