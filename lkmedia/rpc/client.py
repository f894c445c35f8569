"""psrpc client role: call methods served by livekit-server (IOInfo) or anyone else.

One client = one client ID, subscribed once to ``Svc|CLI_x|RES`` and ``Svc|CLI_x|CLAIM``
before anything is published. A call publishes a Request (new ``REQ_`` id, expiry =
now + timeout) on ``Svc|Method|topic|REQ``; for claim methods it collects
ClaimRequests, picks a server as psrpc's ``selectServer`` does (SelectionOpts below),
announces it on ``…|RCLAIM`` and waits for that server's Response.

Errors, as psrpc returns them: nobody claimed → ``unavailable`` "no response from
servers"; claims seen but none acceptable → ``unavailable`` "no servers available
(received N responses)"; no Response in time → ``deadline_exceeded`` "request timed out".
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from .bus import RedisBus, Subscription
from .channels import (
    Topic,
    claim_request_channel,
    claim_response_channel,
    new_client_id,
    new_request_id,
    request_channel,
    response_channel,
    topic_list,
)
from .wire import ClaimRequest, ClaimResponse, Request, Response, RpcError, decode, no_response, timed_out

log = logging.getLogger("lkmedia.rpc")

Res = TypeVar("Res", bound=Message)

DEFAULT_TIMEOUT = 3.0  # psrpc DefaultClientTimeout
DEFAULT_SELECTION_TIMEOUT = 1.0  # psrpc DefaultAffinityTimeout
DEFAULT_SHORT_CIRCUIT = 0.2  # psrpc DefaultAffinityShortCircuit


@dataclass(frozen=True)
class SelectionOpts:
    """psrpc SelectionOpts (seconds instead of Durations; no SelectionFunc)."""

    minimum_affinity: float = 0.0
    maximum_affinity: float = 0.0
    accept_first_available: bool = False
    affinity_timeout: float = DEFAULT_SELECTION_TIMEOUT
    short_circuit_timeout: float = 0.0

    @classmethod
    def for_queue(cls, selection_timeout: float = DEFAULT_SELECTION_TIMEOUT) -> SelectionOpts:
        """psrpc's default for non-affinity methods: the first claim wins."""
        return cls(accept_first_available=True, affinity_timeout=selection_timeout)

    @classmethod
    def for_affinity(cls, selection_timeout: float = DEFAULT_SELECTION_TIMEOUT) -> SelectionOpts:
        """psrpc's default for affinity methods: best claim after a 200 ms short circuit."""
        return cls(affinity_timeout=selection_timeout, short_circuit_timeout=DEFAULT_SHORT_CIRCUIT)


#: What livekit-server v1.13.5 uses for EgressInternal.StartEgress (protocol rpc/egress_client.go).
START_EGRESS_SELECTION = SelectionOpts(maximum_affinity=1.0, affinity_timeout=1.0, short_circuit_timeout=0.5)


class RpcClient:
    """The client side of one psrpc service."""

    def __init__(self, bus: RedisBus, service: str, *, client_id: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT, selection_timeout: float = DEFAULT_SELECTION_TIMEOUT,
                 max_pending: int = 1024) -> None:
        if not service:
            raise ValueError("service name must not be empty")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self.bus, self.service = bus, service
        self.client_id = client_id or new_client_id()
        self.timeout, self.selection_timeout = timeout, selection_timeout
        self.max_pending = max_pending
        # request_id -> queue of ClaimRequest / Response for that request
        self._pending: dict[str, asyncio.Queue[ClaimRequest | Response]] = {}
        self._subs: list[Subscription] = []
        self._loops: list[asyncio.Task[None]] = []
        self._started = False
        self._closed = False

    async def start(self) -> None:
        """Subscribes to our RES and CLAIM channels (confirmed before any call publishes)."""
        if self._started:
            return
        for ch in (response_channel(self.service, self.client_id), claim_request_channel(self.service, self.client_id)):
            sub = await self.bus.subscribe(ch)
            self._subs.append(sub)
            self._loops.append(asyncio.create_task(self._route(sub), name=f"rpc-client-{ch}"))
        self._started = True

    async def close(self) -> None:
        """Unsubscribes; calls still waiting fail with ``canceled``."""
        self._closed = True
        for sub in self._subs:
            await sub.close()
        for t in self._loops:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._subs.clear()
        self._loops.clear()
        for q in self._pending.values():
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(Response(error="client closed", code="canceled"))

    async def __aenter__(self) -> RpcClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _route(self, sub: Subscription) -> None:
        while (payload := await sub.get()) is not None:
            try:
                msg = decode(payload)
            except DecodeError:
                continue
            if isinstance(msg, ClaimRequest | Response):
                q = self._pending.get(msg.request_id)
                if q is not None:
                    with contextlib.suppress(asyncio.QueueFull):  # bounded: extra claims are noise
                        q.put_nowait(msg)

    def _open(self, request_id: str) -> asyncio.Queue[ClaimRequest | Response]:
        if not self._started or self._closed:
            raise RuntimeError(f"RpcClient {self.service}: call before start() or after close()")
        if len(self._pending) >= self.max_pending:
            raise RpcError("resource_exhausted", f"{len(self._pending)} {self.service} calls already pending")
        q: asyncio.Queue[ClaimRequest | Response] = asyncio.Queue(maxsize=self.bus.channel_size)
        self._pending[request_id] = q
        return q

    def _request(self, request_id: str, request: Message, timeout: float, multi: bool,
                 metadata: dict[str, str] | None) -> Request:
        now = time.time_ns()
        return Request(request_id=request_id, client_id=self.client_id, sent_at=now,
                       expiry=now + int(timeout * 1e9), multi=multi, raw_request=request.SerializeToString(),
                       metadata=metadata or {})

    async def call(
        self, method: str, request: Message, response_type: type[Res], *, topic: Topic = None,
        timeout: float | None = None, require_claim: bool = True, selection: SelectionOpts | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Res:
        """One request, one answer. ``selection`` defaults to first-claim-wins (queue
        methods); pass SelectionOpts.for_affinity() or START_EGRESS_SELECTION otherwise."""
        timeout = self.timeout if timeout is None else timeout
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        topics = topic_list(topic)
        opts = selection or SelectionOpts.for_queue(self.selection_timeout)
        request_id = new_request_id()
        q = self._open(request_id)
        try:
            await self.bus.publish(request_channel(self.service, method, topics),
                                   self._request(request_id, request, timeout, False, metadata))
            deadline = asyncio.get_running_loop().time() + timeout
            if require_claim:
                server_id = await _select(q, opts, deadline)
                await self.bus.publish(claim_response_channel(self.service, method, topics),
                                       ClaimResponse(request_id=request_id, server_id=server_id))
            while True:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    raise timed_out()
                try:
                    msg = await asyncio.wait_for(q.get(), remaining)
                except TimeoutError:
                    raise timed_out() from None
                if isinstance(msg, Response):
                    return _result(msg, response_type)
        finally:
            self._pending.pop(request_id, None)

    async def call_multi(
        self, method: str, request: Message, response_type: type[Res], *, topic: Topic = None,
        timeout: float | None = None, metadata: dict[str, str] | None = None,
    ) -> list[Res | RpcError]:
        """A MULTI request: every answer that arrives within ``timeout`` (errors included)."""
        timeout = self.timeout if timeout is None else timeout
        request_id = new_request_id()
        q = self._open(request_id)
        results: list[Res | RpcError] = []
        try:
            await self.bus.publish(request_channel(self.service, method, topic_list(topic)),
                                   self._request(request_id, request, timeout, True, metadata))
            deadline = asyncio.get_running_loop().time() + timeout
            while (remaining := deadline - asyncio.get_running_loop().time()) > 0:
                try:
                    msg = await asyncio.wait_for(q.get(), remaining)
                except TimeoutError:
                    break
                if isinstance(msg, Response):
                    try:
                        results.append(_result(msg, response_type))
                    except RpcError as e:
                        results.append(e)
        finally:
            self._pending.pop(request_id, None)
        return results


def _result(res: Response, response_type: type[Res]) -> Res:
    if res.error:
        raise RpcError.from_response(res.code or "unknown", res.error)
    try:
        return response_type.FromString(res.raw_response)
    except DecodeError:
        raise RpcError("malformed_result", f"cannot decode {response_type.__name__}") from None


async def _select(q: asyncio.Queue[ClaimRequest | Response], opts: SelectionOpts, deadline: float) -> str:
    """psrpc selectServer: returns the chosen server ID or raises its error."""
    loop = asyncio.get_running_loop()
    end = min(deadline, loop.time() + opts.affinity_timeout) if opts.affinity_timeout > 0 else deadline
    best_id, best, count = "", 0.0, 0
    res_err: RpcError | None = None
    shorted = False
    while (remaining := end - loop.time()) > 0:
        try:
            msg = await asyncio.wait_for(q.get(), remaining)
        except TimeoutError:
            break
        if isinstance(msg, Response):  # only malformed-request errors come before a claim
            if msg.error:
                res_err = RpcError.from_response(msg.code or "unknown", msg.error)
            continue
        count += 1
        if opts.minimum_affinity > 0 and msg.affinity < opts.minimum_affinity:
            continue
        if opts.accept_first_available or (opts.maximum_affinity > 0 and msg.affinity >= opts.maximum_affinity):
            return msg.server_id
        if msg.affinity > best:
            best_id, best = msg.server_id, msg.affinity
        if opts.short_circuit_timeout > 0 and not shorted:
            shorted = True
            end = min(end, loop.time() + opts.short_circuit_timeout)
    if best_id:
        return best_id
    if res_err is not None:
        raise res_err
    if count:
        raise RpcError("unavailable", f"no servers available (received {count} responses)")
    raise no_response()


__all__ = ["DEFAULT_TIMEOUT", "RpcClient", "START_EGRESS_SELECTION", "SelectionOpts"]
