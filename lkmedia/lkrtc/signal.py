"""LiveKit's signalling protocol over a WebSocket, for a participant that only subscribes.

The client joins ``<url>/rtc`` with its token as a bearer (protocol v0: the server offers the subscriber
PeerConnection and we answer; no publisher PeerConnection is needed because the server
makes the subscriber connection primary for a client that may subscribe, protocol > 2).
Messages are ``livekit_rtc.proto``'s SignalRequest/SignalResponse as binary frames.

What flows: JoinResponse first; then the server's subscriber offers (we answer), ICE
candidates both ways (target SUBSCRIBER), participant updates, and pings from us every
``ping_interval`` s (the server closes a client it has not heard from within
``ping_timeout``; we treat a silent server the same way). ``close()`` says leave first.

Incoming messages other than the join are handed to ``on_message(kind, message)`` in
arrival order, ``kind`` being the SignalResponse field name ("offer", "trickle",
"update", "leave", ...). The handler may be a coroutine function; it is awaited before
the next message is read, so an offer is fully answered before a later trickle is applied.
"""
from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from livekit.protocol import models as proto_models
from livekit.protocol import rtc as proto_rtc
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from ..core.clock import sleep_to_tick

log = logging.getLogger("lkmedia.lkrtc.signal")

#: The signalling protocol we speak: 16 has request responses and room moves; 17 adds
#: packet trailers, which we do not ask for.
PROTOCOL = 16
SDK_NAME = "python"
SDK_VERSION = "lkmedia-0.1"
SUBSCRIBER = proto_rtc.SignalTarget.SUBSCRIBER

Handler = Callable[[str, Any], Awaitable[None] | None]
_JWT = re.compile(r"eyJ[\w-]*(?:\.[\w-]*){0,2}")


class SignalError(Exception):
    """The server refused the join, or the signalling connection failed."""


def join_url(url: str, *, auto_subscribe: bool = False, adaptive_stream: bool = False) -> str:
    """The WebSocket URL to join with: ``url`` as livekit.rtc takes it (ws, wss, http or
    https, with or without a path prefix), ``/rtc`` and the query the server parses. The
    token goes in an Authorization header, not in the URL (which proxies log)."""
    parts = urllib.parse.urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss"):
        raise ValueError("LiveKit URL must start with ws://, wss://, http:// or https://")
    path = parts.path.rstrip("/")
    if not path.endswith("/rtc"):
        path += "/rtc"
    query = urllib.parse.urlencode({
        "auto_subscribe": "1" if auto_subscribe else "0",
        "adaptive_stream": "1" if adaptive_stream else "0",
        "sdk": SDK_NAME,
        "version": SDK_VERSION,
        "protocol": str(PROTOCOL),
    })
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, query, ""))


def candidate_init(candidate: str, sdp_mid: str | None, sdp_mline_index: int | None) -> str:
    """A TrickleRequest's candidateInit: the JSON of a browser RTCIceCandidateInit."""
    if not candidate.startswith("candidate:"):
        candidate = "candidate:" + candidate
    return json.dumps({"candidate": candidate, "sdpMid": sdp_mid, "sdpMLineIndex": sdp_mline_index})


class SignalClient:
    """One signalling connection: ``await connect()`` returns the JoinResponse."""

    def __init__(self, url: str, token: str, *, auto_subscribe: bool = False,
                 connect_timeout: float = 10.0, on_message: Handler | None = None) -> None:
        if not token:
            raise ValueError("a join token is needed")
        self._url = join_url(url, auto_subscribe=auto_subscribe)
        self._token = token
        self.connect_timeout = connect_timeout
        self.on_message = on_message
        self.join: proto_rtc.JoinResponse | None = None
        self.closed_reason: str | None = None
        self.rtt_ms: int | None = None
        self._ws: ClientConnection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._last_heard = 0.0
        self._closed = asyncio.Event()
        self._send_lock = asyncio.Lock()

    def _safe(self, text: str) -> str:
        """``text`` without the token, whole or in part (the server's 401 body quotes it)."""
        return _JWT.sub("***", text.replace(self._token, "***"))

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # -- connect ---------------------------------------------------------------
    async def connect(self) -> proto_rtc.JoinResponse:
        try:
            async with asyncio.timeout(self.connect_timeout):
                self._ws = await connect(self._url, max_size=None, ping_interval=None,
                                         open_timeout=self.connect_timeout,
                                         additional_headers={"Authorization": f"Bearer {self._token}"})
                join = await self._read_join(self._ws)
        except TimeoutError:
            await self._abort()
            raise SignalError(f"no answer to the join within {self.connect_timeout:g} s") from None
        except InvalidStatus as e:
            body = (e.response.body or b"").decode(errors="replace").strip()[:300]
            raise SignalError(f"join refused: HTTP {e.response.status_code} {self._safe(body)}") from None
        except (OSError, InvalidHandshake, InvalidURI) as e:
            raise SignalError(f"cannot reach the server: {self._safe(str(e))}") from None
        self.join = join
        self._last_heard = time.monotonic()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read_loop(), name="lkrtc-signal-read"),
                       loop.create_task(self._ping_loop(), name="lkrtc-signal-ping")]
        return join

    async def _read_join(self, ws: ClientConnection) -> proto_rtc.JoinResponse:
        while True:
            res = proto_rtc.SignalResponse()
            try:
                res.ParseFromString(await ws.recv(decode=False))
            except ConnectionClosed as e:
                raise SignalError(f"the server closed the connection before the join ({e.rcvd})") from None
            kind = res.WhichOneof("message")
            if kind == "join":
                return res.join
            if kind == "leave":
                reason = proto_models.DisconnectReason.Name(res.leave.reason)
                raise SignalError(f"the server refused the join ({reason})")
            log.debug("signal: %s before the join, ignored", kind)

    # -- reading ---------------------------------------------------------------
    async def _read_loop(self) -> None:
        assert self._ws is not None
        reason = "server closed the connection"
        try:
            async for data in self._ws:
                self._last_heard = time.monotonic()
                if isinstance(data, str):
                    continue
                res = proto_rtc.SignalResponse()
                res.ParseFromString(data)
                kind = res.WhichOneof("message")
                if kind is None:
                    continue
                if kind == "pong_resp":
                    self.rtt_ms = int(time.time() * 1000) - res.pong_resp.last_ping_timestamp
                    continue
                if kind == "pong":
                    continue
                if kind == "leave":
                    reason = "left: " + proto_models.DisconnectReason.Name(res.leave.reason)
                await self._dispatch(kind, getattr(res, kind))
        except ConnectionClosed:
            pass
        except Exception as e:  # a handler failed: the session cannot go on consistently
            log.exception("signal: handling a message failed")
            reason = f"handler failed: {e}"
        finally:
            self._finish(reason)

    async def _dispatch(self, kind: str, msg: Any) -> None:
        if self.on_message is None:
            return
        r = self.on_message(kind, msg)
        if inspect.isawaitable(r):
            await r

    async def _ping_loop(self) -> None:
        join = self.join
        assert join is not None
        interval = join.ping_interval or 5
        timeout = join.ping_timeout or 15
        while not self.closed:
            await sleep_to_tick(interval)  # (with the other timers: lkmedia.core.clock.tick)
            if time.monotonic() - self._last_heard > timeout:
                self._finish(f"no message from the server for {timeout} s")
                await self._abort()
                return
            now_ms = int(time.time() * 1000)
            await self.send(proto_rtc.SignalRequest(ping=now_ms))
            await self.send(proto_rtc.SignalRequest(ping_req=proto_rtc.Ping(timestamp=now_ms,
                                                                            rtt=self.rtt_ms or 0)))

    def _finish(self, reason: str) -> None:
        if not self._closed.is_set():
            self.closed_reason = reason
            self._closed.set()
            log.debug("signal: closed (%s)", reason)

    # -- sending ---------------------------------------------------------------
    async def send(self, req: proto_rtc.SignalRequest) -> bool:
        """Send one request; False if the connection is gone (nothing to retry)."""
        ws = self._ws
        if ws is None or self.closed:
            return False
        try:
            async with self._send_lock:
                await ws.send(req.SerializeToString())
        except ConnectionClosed:
            self._finish("server closed the connection")
            return False
        return True

    async def send_answer(self, sdp: str, offer_id: int = 0) -> bool:
        return await self.send(proto_rtc.SignalRequest(
            answer=proto_rtc.SessionDescription(type="answer", sdp=sdp, id=offer_id)))

    async def send_candidate(self, candidate: str, sdp_mid: str | None, sdp_mline_index: int | None) -> bool:
        return await self.send(proto_rtc.SignalRequest(trickle=proto_rtc.TrickleRequest(
            candidateInit=candidate_init(candidate, sdp_mid, sdp_mline_index), target=SUBSCRIBER)))

    async def update_subscription(self, track_sids: list[str], subscribe: bool = True) -> bool:
        return await self.send(proto_rtc.SignalRequest(
            subscription=proto_rtc.UpdateSubscription(track_sids=track_sids, subscribe=subscribe)))

    async def update_track_settings(self, track_sids: list[str], *, width: int = 0, height: int = 0,
                                    disabled: bool = False) -> bool:
        """Which layer of a simulcast video we want (the largest by default: 0 x 0 asks for
        nothing in particular, the server then sends its top layer to a non-adaptive client)."""
        return await self.send(proto_rtc.SignalRequest(track_setting=proto_rtc.UpdateTrackSettings(
            track_sids=track_sids, disabled=disabled, width=width, height=height)))

    # -- close -----------------------------------------------------------------
    async def close(self) -> None:
        """Say leave (the server then removes us at once, not after a timeout) and close."""
        if self._ws is not None and not self.closed:
            await self.send(proto_rtc.SignalRequest(leave=proto_rtc.LeaveRequest(
                reason=proto_models.DisconnectReason.CLIENT_INITIATED,
                action=proto_rtc.LeaveRequest.Action.DISCONNECT)))
        self._finish("closed")
        await self._abort()

    async def _abort(self) -> None:
        ws, self._ws = self._ws, None
        current = asyncio.current_task()
        for t in self._tasks:
            if t is not current:
                t.cancel()
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2.0)
        for t in self._tasks:
            if t is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
