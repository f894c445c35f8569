"""WHIP on ``whip_port``, as the Go ingress serves it (``pkg/whip/server.go``):

    POST   /{app}/{stream_key}  or  /{app} with "Authorization: Bearer <stream_key>"
           (Content-Type application/sdp) -> 201, the SDP answer, Location /{app}/{key}/{resource}
    DELETE /{app}/{stream_key}/{resource_id} -> the session ends
    PATCH  /{app}/{stream_key}/{resource_id} -> without transcoding, to livekit-server's own
           WHIP resource (trickle ICE, and ICE restart with If-Match: *); with transcoding 422
           (aiortc cannot restart ICE)
    OPTIONS (CORS), GET /health, GET /availability

``WhipSessions`` serves them for ingresses looked up by stream key:
- without transcoding (the WHIP default), the offer goes to livekit-server's own WHIP
  endpoint (``/whip/v1``) with the ingress's token and ``X-Livekit-Ingress: true``, as the
  Go ingress's proxy mode does: no media passes through lkmedia;
- with transcoding, aiortc answers (gathering done before the answer: no trickle), decodes,
  and an IngressSession publishes into the room (simulcast, Opus).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from livekit.protocol import ingress as lki

from ..core import LkmediaError
from ..service.health import HttpEndpoint
from ..sources.webrtc import RtcTrackSource
from .presets import ingress_token
from .session import IngressSession

log = logging.getLogger("lkmedia.ingress.whip")

SDP = "application/sdp"
CORS = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "OPTIONS, POST, PATCH, DELETE",
        "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
        "Access-Control-Expose-Headers": "Location, ETag, Link"}
_PATH = re.compile(r"^/(?P<app>[^/]+)(?:/(?P<key>[^/]+)(?:/(?P<resource>[^/]+))?)?/?$")


class WhipRefused(LkmediaError):
    """A WHIP request that is answered with an HTTP error (status, plain words)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class WhipAnswer:
    sdp: str
    resource_id: str
    etag: str = ""  # the ICE session's tag, for PATCH (livekit-server's in proxy mode)


@dataclass
class WhipPatched:
    status: int
    body: str = ""
    etag: str = ""


SDPFRAG = "application/trickle-ice-sdpfrag"


class WhipServer:
    """The HTTP side: routes WHIP requests to ``publish`` / ``delete`` callbacks."""

    def __init__(self, port: int, publish: Callable[[str, str, str], Awaitable[WhipAnswer]],
                 delete: Callable[[str, str], Awaitable[None]], *, host: str | None = None,
                 available: Callable[[], bool] = lambda: True,
                 patch: Callable[[str, str, str, str, str], Awaitable[WhipPatched]] | None = None) -> None:
        """``patch(stream_key, resource_id, if_match, content_type, fragment)``: PATCH; 422 without it."""
        self._publish, self._delete, self._available, self._patch = publish, delete, available, patch
        self.endpoint = HttpEndpoint(port, self._handle, host=host, name="whip")

    @property
    def port(self) -> int:
        return self.endpoint.port

    async def start(self) -> None:
        await self.endpoint.start()

    async def stop(self) -> None:
        await self.endpoint.stop()

    async def _handle(self, req: web.BaseRequest) -> web.StreamResponse:
        try:
            return await self._route(req)
        except WhipRefused as e:
            log.info("whip: %s %s refused (%d): %s", req.method, _safe_path(req.path), e.status, e)
            return web.Response(status=e.status, text=str(e) + "\n", headers=CORS)
        except Exception as e:
            log.exception("whip: %s %s failed", req.method, _safe_path(req.path))
            return web.Response(status=500, text=f"{e}\n", headers=CORS)

    async def _route(self, req: web.BaseRequest) -> web.StreamResponse:
        if req.method == "OPTIONS":
            return web.Response(status=204, headers=CORS)
        if req.method == "GET" and req.path == "/health":
            return web.Response(text="Healthy")
        if req.method == "GET" and req.path == "/availability":
            ok = self._available()
            return web.Response(status=200 if ok else 503, text="Available" if ok else "No availability")
        m = _PATH.match(req.path)
        if m is None:
            raise WhipRefused(404, "not a WHIP path: use /{app}/{stream_key}")
        app, key, resource = m["app"], m["key"], m["resource"]
        if req.method == "POST" and resource is None:
            if key is None:
                auth = req.headers.get("Authorization", "")
                key = auth[7:].strip() if auth.lower().startswith("bearer ") else auth.strip()
            if not key:
                raise WhipRefused(401, "no stream key: put it in the URL or in 'Authorization: Bearer <key>'")
            if req.content_type != SDP:
                raise WhipRefused(415, f"the offer must be sent as {SDP}, not {req.content_type or 'nothing'}")
            offer = await req.text()
            ans = await self._publish(app, key, offer)
            headers = {**CORS, "Location": f"/{app}/{key}/{ans.resource_id}",
                       "ETag": ans.etag or f'"{zlib.crc32(offer.encode()):08x}"'}
            return web.Response(status=201, body=ans.sdp.encode(), content_type=SDP, headers=headers)
        if req.method == "DELETE" and key is not None and resource is not None:
            await self._delete(key, resource)
            return web.Response(status=200, headers=CORS)
        if req.method == "PATCH" and key is not None and resource is not None and self._patch is not None:
            if req.content_type != SDPFRAG:
                raise WhipRefused(415, f"a PATCH must be sent as {SDPFRAG}, not {req.content_type or 'nothing'}")
            if_match = req.headers.get("If-Match", "")
            if not if_match:
                raise WhipRefused(428, "a PATCH needs If-Match: '*' for an ICE restart, or the ETag for trickle")
            out = await self._patch(key, resource, if_match, req.content_type, await req.text())
            return web.Response(status=out.status, body=out.body.encode() if out.body else None,
                                headers={**CORS, **({"ETag": out.etag} if out.etag else {}),
                                         **({"Content-Type": SDPFRAG} if out.body else {})})
        if req.method == "PATCH":
            raise WhipRefused(422, "trickle ICE and ICE restart are not supported: send the whole offer again")
        raise WhipRefused(405, f"{req.method} is not a WHIP method for this path")


def _safe_path(path: str) -> str:
    """A request path for logs: the stream key hidden."""
    m = _PATH.match(path)
    return f"/{m['app']}/…" if m and m["key"] else path


# -- sessions ----------------------------------------------------------------------


@dataclass
class _Resource:
    info: lki.IngressInfo
    resource_id: str
    sfu_location: str = ""  # proxy mode: the SFU's resource, DELETEd at the end (and PATCHed)
    pc: Any = None  # transcoding: the aiortc peer connection
    session: IngressSession | None = None
    task: asyncio.Task[lki.IngressState] | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    end_remote: Callable[[], Awaitable[None]] | None = None  # a session run elsewhere (a job process)
    etag: str = ""  # proxy mode: the SFU's ICE session tag
    ending: asyncio.Future[None] | None = None  # WhipSessions.end, once


class WhipSessions:
    """WHIP publish/delete for ingresses that ``lookup(stream_key)`` finds (it raises
    WhipRefused for an unknown or disabled key). ``on_state(info, state)`` sees every
    state change of a session; ``on_end(info, state)`` its last."""

    def __init__(self, ws_url: str, api_key: str, api_secret: str,
                 lookup: Callable[[str], Awaitable[lki.IngressInfo]], *,
                 on_state: Callable[[lki.IngressInfo, lki.IngressState], None] | None = None,
                 transcoder: Callable[[_Resource, str], Awaitable[str]] | None = None) -> None:
        """``transcoder(resource, offer)``: answers a transcoding offer with a session run
        elsewhere (the service's job process; it sets ``resource.end_remote``); by default
        the session runs here, in this process."""
        self.ws_url, self._api_key, self._api_secret = ws_url, api_key, api_secret
        self._lookup = lookup
        self.on_state = on_state
        self._transcoder = transcoder
        self.resources: dict[str, _Resource] = {}
        self._http: aiohttp.ClientSession | None = None

    def _token(self, info: lki.IngressInfo) -> str:
        return ingress_token(self._api_key, self._api_secret, info)

    def live(self, stream_key: str) -> bool:
        return any(r.info.stream_key == stream_key and not r.ended.is_set() for r in self.resources.values())

    async def publish(self, app: str, stream_key: str, offer: str) -> WhipAnswer:
        info = await self._lookup(stream_key)
        if info.input_type != lki.WHIP_INPUT:
            raise WhipRefused(400, f"ingress {info.ingress_id} is not a WHIP ingress")
        if self.live(stream_key):
            raise WhipRefused(409, f"ingress {info.ingress_id} is already being published to")
        res = _Resource(info, info.state.resource_id or f"WH_{uuid.uuid4().hex[:12]}")  # the service's, if set
        transcode = info.enable_transcoding if info.HasField("enable_transcoding") else not info.bypass_transcoding
        if not transcode:
            answer = await self._proxy(res, offer)
        elif self._transcoder is not None:
            answer = await self._transcoder(res, offer)
        else:
            answer = await self._transcode(res, offer)
        self.resources[res.resource_id] = res
        return WhipAnswer(answer, res.resource_id, res.etag)

    async def patch(self, stream_key: str, resource_id: str, if_match: str, content_type: str,
                    fragment: str) -> WhipPatched:
        """PATCH (RFC 9725 trickle ICE / ICE restart): proxied sessions to livekit-server's own
        resource; transcoding sessions cannot (aiortc restarts no ICE): 422."""
        res = self.resources.get(resource_id)
        if res is None or res.info.stream_key != stream_key:
            raise WhipRefused(404, "no such WHIP session")
        if not res.sfu_location:
            raise WhipRefused(422, "ICE restart and trickle ICE are not supported for a transcoding WHIP session "
                                   "(aiortc cannot restart ICE): send a new offer")
        headers = {"Authorization": f"Bearer {self._token(res.info)}", "Content-Type": content_type,
                   "If-Match": if_match}
        try:
            async with self._client().patch(self._sfu_url(res.sfu_location), data=fragment.encode(),
                                            headers=headers) as r:
                body = await r.text()
                if r.status >= 300:
                    raise WhipRefused(r.status if r.status < 500 else 502,
                                      f"livekit-server refused the PATCH ({r.status}): {body.strip()[:200]}")
                res.etag = r.headers.get("ETag", res.etag)
                return WhipPatched(r.status, body, r.headers.get("ETag", ""))
        except (aiohttp.ClientError, TimeoutError) as e:
            raise WhipRefused(502, f"livekit-server's WHIP endpoint cannot be reached: {e or 'timed out'}") from e

    async def delete(self, stream_key: str, resource_id: str) -> None:
        res = self.resources.get(resource_id)
        if res is None or res.info.stream_key != stream_key:
            raise WhipRefused(404, "no such WHIP session")
        await self.end(res)

    async def end(self, res: _Resource) -> None:
        """End a session and wait for its last state. Several may ask at once (the client's
        DELETE and livekit-server's notify that the connection closed): it ends once."""
        if res.ending is None:
            res.ending = asyncio.ensure_future(self._end(res))
        await asyncio.shield(res.ending)

    async def _end(self, res: _Resource) -> None:
        if res.end_remote is not None:
            await res.end_remote()
        if res.session is not None:
            await res.session.stop()
        if res.pc is not None:
            await res.pc.close()
        if res.task is not None:
            await asyncio.gather(res.task, return_exceptions=True)
        if res.sfu_location:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                await self._client().delete(self._sfu_url(res.sfu_location),
                                            headers={"Authorization": f"Bearer {self._token(res.info)}"})
            res.sfu_location = ""
            self._state(res, lki.IngressState(status=lki.IngressState.ENDPOINT_INACTIVE,
                                              resource_id=res.resource_id, ended_at=time.time_ns()))
        res.ended.set()
        self.resources.pop(res.resource_id, None)

    async def close(self) -> None:
        await asyncio.gather(*(self.end(r) for r in list(self.resources.values())), return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None

    # -- proxy (no transcoding) -------------------------------------------------
    def _client(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return self._http

    def _sfu_url(self, path: str = "/whip/v1") -> str:
        base = self.ws_url.replace("wss://", "https://", 1).replace("ws://", "http://", 1).rstrip("/")
        return base + path if path.startswith("/") else path

    async def _proxy(self, res: _Resource, offer: str) -> str:
        headers = {"Authorization": f"Bearer {self._token(res.info)}", "Content-Type": SDP,
                   "X-Livekit-Ingress": "true"}
        try:
            async with self._client().post(self._sfu_url(), data=offer.encode(), headers=headers) as r:
                body = await r.text()
                if r.status != 201:
                    raise WhipRefused(502 if r.status >= 500 else r.status,
                                      f"livekit-server refused the offer ({r.status}): {body.strip()[:200]}")
                res.sfu_location = r.headers.get("Location", "")
                res.etag = r.headers.get("ETag", "")
        except (aiohttp.ClientError, TimeoutError) as e:
            raise WhipRefused(502, f"livekit-server's WHIP endpoint cannot be reached: {e or 'timed out'}") from e
        self._state(res, lki.IngressState(status=lki.IngressState.ENDPOINT_PUBLISHING, resource_id=res.resource_id))
        return udp_first(body)

    # -- transcoding (aiortc) ---------------------------------------------------
    async def _transcode(self, res: _Resource, offer: str) -> str:
        pc, answer, usable = await answer_offer(offer)
        res.pc = pc
        res.session = IngressSession(res.info, RtcTrackSource(usable, name="whip"), self.ws_url,
                                     self._token(res.info), resource_id=res.resource_id,
                                     on_state=lambda s: self._state(res, s))
        res.task = asyncio.create_task(self._run(res), name=f"whip-{res.resource_id}")

        @pc.on("connectionstatechange")
        async def _changed() -> None:
            if pc.connectionState in ("failed", "closed") and res.session is not None:
                await res.session.stop()

        return answer

    async def _run(self, res: _Resource) -> lki.IngressState:
        assert res.session is not None
        try:
            return await res.session.run()
        finally:
            if res.pc is not None:
                await res.pc.close()
            res.ended.set()
            self.resources.pop(res.resource_id, None)

    def _state(self, res: _Resource, state: lki.IngressState) -> None:
        if self.on_state is not None:
            self.on_state(res.info, state)


async def answer_offer(offer: str) -> tuple[Any, str, dict[str, Any]]:
    """aiortc's answer to a WHIP offer (every candidate gathered: no trickle): the peer
    connection, the answer SDP and the remote tracks it will receive, by kind. WhipRefused
    (400, in plain words) for an offer with nothing lkmedia can receive."""
    from aiortc import RTCPeerConnection, RTCSessionDescription

    if not receivable(offer):
        raise WhipRefused(400, "the offer has no audio or video codec lkmedia can receive "
                               f"(video: {', '.join(VIDEO_CODECS)}; audio: {', '.join(AUDIO_CODECS)})")
    pc = RTCPeerConnection()
    tracks: dict[str, Any] = {}
    pc.on("track", lambda track: tracks.setdefault(track.kind, track))
    try:
        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as e:
        await pc.close()
        raise WhipRefused(400, f"the offer cannot be answered: {e}") from e
    usable = {k: t for k, t in tracks.items() if _negotiated(pc, k)}
    if not usable:
        await pc.close()
        raise WhipRefused(400, "the offer's media could not be negotiated")
    return pc, str(pc.localDescription.sdp), usable


def sdpfrag(ufrag: str, pwd: str, candidates: list[str]) -> str:
    """An ``application/trickle-ice-sdpfrag`` body (RFC 8840) from ICE credentials and
    candidates (``candidate:...`` with or without the ``a=``), as the Go ingress's
    ICERestartWHIPResource request carries them."""
    lines = [f"a=ice-ufrag:{ufrag}", f"a=ice-pwd:{pwd}", "m=audio 9 UDP/TLS/RTP/SAVPF 0", "a=mid:0"]
    lines += [c if c.startswith("a=") else f"a={c}" for c in candidates]
    return "\r\n".join(lines) + "\r\n"


def udp_first(sdp: str) -> str:
    """``sdp`` with each media section's UDP candidates before its TCP ones. A client that
    reads only the first candidate (FFmpeg 8's WHIP muxer) then gets one it can use: the
    SFU's answer lists them in no fixed order."""
    out: list[str] = []
    tcp: list[str] = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:") and " tcp " in line.lower():
            tcp.append(line)
            continue
        if line.startswith("m=") or (tcp and not line.startswith("a=candidate:")):
            out += tcp
            tcp = []
        out.append(line)
    out += tcp
    return "\r\n".join(out) + "\r\n"


VIDEO_CODECS = ("VP8", "H264")
AUDIO_CODECS = ("opus", "PCMU", "PCMA", "G722")


def receivable(offer: str) -> set[str]:
    """The kinds ("video", "audio") of the offer that carry a codec aiortc decodes."""
    kinds: set[str] = set()
    kind = ""
    for line in offer.splitlines():
        if line.startswith("m="):
            kind = line[2:].split(" ", 1)[0]
        elif line.startswith("a=rtpmap:") and " " in line:
            name = line.split(" ", 1)[1].split("/", 1)[0]
            ok = VIDEO_CODECS if kind == "video" else AUDIO_CODECS if kind == "audio" else ()
            if name.upper() in (c.upper() for c in ok):
                kinds.add(kind)
    return kinds


def _negotiated(pc: Any, kind: str) -> bool:
    """Whether the answer accepted an m-line of ``kind`` (a rejected one has port 0)."""
    for line in str(pc.localDescription.sdp).splitlines():
        if line.startswith(f"m={kind} "):
            port = line.split()[1]
            if port != "0":
                return True
    return False
