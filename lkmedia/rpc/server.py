"""psrpc server role: answer requests published by livekit-server (or any psrpc client).

For each (method, topic) registration the server subscribes to ``Svc|Method|topic|REQ``
(and ``…|RCLAIM`` when the method needs a claim), then for every request:

* QUEUE: ``SET base64(sha256(payload)) NX PX 5000`` first; only the winner goes on.
* drop it if ``now >= expiry`` (no reply, like Go);
* decode ``raw_request`` (failure → immediate ``malformed_request`` reply);
* AFFINITY / QUEUE: offer a ClaimRequest (affinity from the callback, 1 for queue; a
  negative affinity means stay silent), then wait until ``expiry`` for a ClaimResponse
  naming this server; any other server ID or none means drop;
* MULTI: no claim, answer directly;
* run the handler and publish the Response (raw_response, or error + code).

A handler raising RpcError sends that code and message; any other exception sends
``internal`` / "internal error" (the real message is logged redacted, never sent).
"""
from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from google.protobuf.message import DecodeError, Message

from ..redact import redact_text
from .bus import RedisBus, Subscription
from .channels import (
    Topic,
    claim_request_channel,
    claim_response_channel,
    new_server_id,
    request_channel,
    response_channel,
    topic_list,
)
from .wire import ClaimRequest, ClaimResponse, Request, Response, RpcError, decode

log = logging.getLogger("lkmedia.rpc")

Req = TypeVar("Req", bound=Message)


class Routing(enum.Enum):
    """How requests reach one server among many (psrpc Routing)."""

    QUEUE = 0  # SETNX lock among subscribers, then claim with affinity 1
    AFFINITY = 1  # every server offers a claim with its affinity; the client picks
    MULTI = 2  # every server answers; no claim


@dataclass(frozen=True)
class RequestContext:
    """What psrpc tells a handler about the request besides its payload."""

    request_id: str
    client_id: str
    sent_at_ns: int
    expiry_ns: int
    metadata: dict[str, str] = field(default_factory=dict)

    def remaining(self) -> float:
        """Seconds until the caller stops waiting for our answer."""
        return max(0.0, (self.expiry_ns - time.time_ns()) / 1e9)


Handler = Callable[[Any, RequestContext], Awaitable[Message]]
AffinityFn = Callable[[Any], float | Awaitable[float]]


class _Endpoint(Generic[Req]):
    """One registered (method, topic): its subscriptions, pending claims and handlers."""

    def __init__(self, server: RpcServer, method: str, topic: list[str], handler: Handler,
                 request_type: type[Req], routing: Routing, affinity: AffinityFn | None,
                 require_claim: bool) -> None:
        self.server, self.method, self.topic = server, method, topic
        self.handler, self.request_type, self.routing = handler, request_type, routing
        self.affinity, self.require_claim = affinity, require_claim
        self.claims: dict[str, asyncio.Future[str]] = {}
        self.inflight: set[asyncio.Task[None]] = set()
        self.req_sub: Subscription | None = None
        self.claim_sub: Subscription | None = None
        self.loops: list[asyncio.Task[None]] = []
        self._warned_zero = False

    @property
    def name(self) -> str:
        return f"{self.server.service}.{self.method}" + (f"[{'|'.join(self.topic)}]" if any(self.topic) else "")

    async def start(self) -> None:
        bus, svc = self.server.bus, self.server.service
        if self.require_claim:  # RCLAIM first: a claim decision must never arrive unheard
            self.claim_sub = await bus.subscribe(claim_response_channel(svc, self.method, self.topic))
            self.loops.append(asyncio.create_task(self._claim_loop(self.claim_sub)))
        self.req_sub = await bus.subscribe(request_channel(svc, self.method, self.topic))
        self.loops.append(asyncio.create_task(self._request_loop(self.req_sub)))

    async def stop(self, drain_timeout: float) -> None:
        """Stops taking requests, lets running handlers finish (bounded), then ends."""
        if self.req_sub is not None:
            await self.req_sub.close()
        me = asyncio.current_task()
        pending = [t for t in self.inflight if t is not me]
        if pending:
            _, late = await asyncio.wait(pending, timeout=drain_timeout)
            for t in late:
                t.cancel()
            if late:
                log.warning("rpc: %s: %d handlers still running at shutdown, cancelled", self.name, len(late))
                await asyncio.wait(late)
        if self.claim_sub is not None:
            await self.claim_sub.close()
        for t in self.loops:
            if t is not me:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t

    async def _claim_loop(self, sub: Subscription) -> None:
        while (payload := await sub.get()) is not None:
            try:
                msg = decode(payload)
            except DecodeError:
                continue
            if isinstance(msg, ClaimResponse):
                fut = self.claims.get(msg.request_id)
                if fut is not None and not fut.done():
                    fut.set_result(msg.server_id)

    async def _request_loop(self, sub: Subscription) -> None:
        while (payload := await sub.get()) is not None:
            if self.routing is Routing.QUEUE and not await self.server.bus.try_lock(payload):
                continue
            try:
                msg = decode(payload)
            except DecodeError:
                log.debug("rpc: %s: undecodable payload dropped", self.name)
                continue
            if not isinstance(msg, Request):
                continue
            if time.time_ns() >= msg.expiry:
                log.debug("rpc: %s: expired request %s dropped", self.name, msg.request_id)
                continue
            if len(self.inflight) >= self.server.max_inflight:
                log.warning("rpc: %s: %d requests in flight, %s dropped", self.name, len(self.inflight),
                            msg.request_id)
                continue
            task = asyncio.create_task(self._handle(msg), name=f"rpc-{self.method}-{msg.request_id}")
            self.inflight.add(task)
            task.add_done_callback(self.inflight.discard)

    async def _handle(self, ir: Request) -> None:
        ctx = RequestContext(ir.request_id, ir.client_id, ir.sent_at, ir.expiry, dict(ir.metadata))
        try:
            req = self.request_type.FromString(ir.raw_request)
        except DecodeError:
            await self._respond(ir, error=RpcError("malformed_request", f"cannot decode {self.request_type.__name__}"))
            return
        try:
            if self.require_claim and not await self._claim(ir, req):
                return
        except RpcError as e:
            log.warning("rpc: %s: cannot claim %s: %s", self.name, ir.request_id, e)
            return
        try:
            res = await self.handler(req, ctx)
        except RpcError as e:
            await self._respond(ir, error=e)
        except asyncio.CancelledError:
            await self._respond(ir, error=RpcError("unavailable", "server shutting down"))
            raise
        except Exception as e:  # the caller learns nothing but "internal"; our log gets the reason
            log.error("rpc: %s handler failed: %s", self.name, redact_text(f"{type(e).__name__}: {e}"))
            await self._respond(ir, error=RpcError("internal", "internal error"))
        else:
            await self._respond(ir, result=res)

    async def _claim(self, ir: Request, req: Message) -> bool:
        affinity = 1.0
        if self.affinity is not None:
            try:
                value = self.affinity(req)
                affinity = float(await value if inspect.isawaitable(value) else value)
            except Exception as e:
                log.error("rpc: %s affinity failed: %s", self.name, redact_text(f"{type(e).__name__}: {e}"))
                return False
            if affinity < 0:
                return False
            if affinity == 0:  # a 0 claim can never win a psrpc selection: don't pretend
                if not self._warned_zero:
                    self._warned_zero = True
                    log.warning("rpc: %s affinity returned 0; return > 0 to accept or < 0 to decline", self.name)
                return False
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.claims[ir.request_id] = fut
        try:
            await self.server.bus.publish(
                claim_request_channel(self.server.service, ir.client_id),
                ClaimRequest(request_id=ir.request_id, server_id=self.server.server_id, affinity=affinity),
            )
            try:
                chosen = await asyncio.wait_for(fut, max(0.0, (ir.expiry - time.time_ns()) / 1e9))
            except TimeoutError:
                return False
        finally:
            self.claims.pop(ir.request_id, None)
        return chosen == self.server.server_id

    async def _respond(self, ir: Request, *, result: Message | None = None, error: RpcError | None = None) -> None:
        res = Response(request_id=ir.request_id, server_id=self.server.server_id, sent_at=time.time_ns())
        if error is not None:
            res.error, res.code = error.message or error.code, error.code
        elif result is not None:
            res.raw_response = result.SerializeToString()
        try:
            await self.server.bus.publish(response_channel(self.server.service, ir.client_id), res)
        except RpcError as e:
            log.warning("rpc: %s: response to %s lost: %s", self.name, ir.request_id, e)


class RpcServer:
    """The server side of one psrpc service (one server ID), with any number of
    (method, topic) registrations added and removed while it runs."""

    def __init__(self, bus: RedisBus, service: str, *, server_id: str | None = None,
                 max_inflight: int = 256, drain_timeout: float = 30.0) -> None:
        if not service:
            raise ValueError("service name must not be empty")
        self.bus, self.service = bus, service
        self.server_id = server_id or new_server_id()
        self.max_inflight, self.drain_timeout = max_inflight, drain_timeout
        self._endpoints: dict[tuple[str, tuple[str, ...]], _Endpoint[Any]] = {}
        self._lock = asyncio.Lock()
        self._closed = False

    async def register(
        self, method: str, handler: Handler, request_type: type[Message], *, topic: Topic = None,
        routing: Routing = Routing.QUEUE, affinity: AffinityFn | None = None, require_claim: bool | None = None,
    ) -> None:
        """Starts serving ``method`` on ``topic``; returns once subscribed on Redis."""
        if self._closed:
            raise RuntimeError(f"RpcServer {self.service} is closed")
        if affinity is not None and routing is not Routing.AFFINITY:
            raise ValueError(f"{self.service}.{method}: an affinity function needs Routing.AFFINITY")
        claim = routing is not Routing.MULTI if require_claim is None else require_claim
        topics = topic_list(topic)
        key = (method, tuple(topics))
        async with self._lock:
            if key in self._endpoints:
                raise ValueError(f"{self.service}.{method} already registered on topic {topics}")
            ep = _Endpoint(self, method, topics, handler, request_type, routing, affinity, claim)
            try:
                await ep.start()
            except BaseException:
                await ep.stop(0)
                raise
            self._endpoints[key] = ep

    async def deregister(self, method: str, topic: Topic = None, *, drain_timeout: float | None = None) -> None:
        """Stops serving ``method`` on ``topic`` (a no-op if not registered); running
        handlers finish first. Safe to call from inside one of this endpoint's handlers."""
        async with self._lock:
            ep = self._endpoints.pop((method, tuple(topic_list(topic))), None)
        if ep is not None:
            await ep.stop(self.drain_timeout if drain_timeout is None else drain_timeout)

    def registered(self) -> list[tuple[str, tuple[str, ...]]]:
        return sorted(self._endpoints)

    async def close(self, drain_timeout: float | None = None) -> None:
        """Deregisters everything, letting running handlers finish (bounded)."""
        self._closed = True
        async with self._lock:
            eps = list(self._endpoints.values())
            self._endpoints.clear()
        await asyncio.gather(*(ep.stop(self.drain_timeout if drain_timeout is None else drain_timeout)
                               for ep in eps))

    async def __aenter__(self) -> RpcServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


__all__ = ["AffinityFn", "Handler", "RequestContext", "Routing", "RpcServer"]
