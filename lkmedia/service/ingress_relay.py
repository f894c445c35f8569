"""The relay that carries an accepted RTMP publish from the service to its job process, on
``http_relay_port`` (loopback), as the Go ingress relays from its service to its handler
process.

The service ``offer``s a session under its resource ID with a random token; the job opens
``http://127.0.0.1:<port>/rtmp/<resource_id>`` with ``Authorization: Bearer <token>`` (FFmpeg's
``headers`` option, so lkmedia.sources.file.FileSource reads it as any other URL) and gets the
stream as FLV, chunked, for as long as it lasts. One reader per session; a wrong token is 403,
an unknown session 404, a second reader 409. Back-pressure runs all the way: a job that reads
slowly slows the HTTP writes, which slow the reads from the publisher's socket. A job that stops
reading ends the RTMP session.

A publish whose first audio or video tag carries a codec FFmpeg cannot decode
(lkmedia.rtmp.flv_codecs) is refused here, where its bytes are seen: the tag is not relayed,
the publisher is disconnected, and ``refusals`` keeps the reason (naming the codec) for the
session's final state, whatever its job made of the truncated stream.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import re
import secrets
from dataclasses import dataclass, field

from aiohttp import web

from ..rtmp import RtmpSession
from ..rtmp.flv import HEADER
from ..rtmp.flv_codecs import FlvCodecCheck
from .health import HttpEndpoint

log = logging.getLogger("lkmedia.ingress")
_PATH = re.compile(r"/rtmp/([A-Za-z0-9_]{1,64})")


@dataclass
class RelayTicket:
    """What a job process is given to read its session (the token is a secret: never logged)."""
    url: str
    headers: str = field(repr=False)  # FFmpeg's ``headers`` option: the Authorization line
    done: asyncio.Future[str] = field(repr=False)  # the session's end reason, once relayed to its end


@dataclass
class _Offer:
    session: RtmpSession
    token: str
    done: asyncio.Future[str]
    taken: bool = False


class FlvRelay(HttpEndpoint):
    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        super().__init__(port, self._serve, host=host, name="http relay")
        self._host_name = host
        self._offers: dict[str, _Offer] = {}
        self.refusals: dict[str, str] = {}  # resource ID -> why its publish was refused (until withdrawn)

    def offer(self, resource_id: str, session: RtmpSession) -> RelayTicket:
        if not _PATH.fullmatch(f"/rtmp/{resource_id}"):
            raise ValueError(f"not a resource ID: {resource_id!r}")
        token = secrets.token_urlsafe(24)
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._offers[resource_id] = _Offer(session, token, done)
        url = f"http://{self._host_name}:{self.port}/rtmp/{resource_id}"
        return RelayTicket(url, f"Authorization: Bearer {token}\r\n", done)

    def withdraw(self, resource_id: str) -> None:
        """Forget a session nobody took (its job never started)."""
        offer = self._offers.pop(resource_id, None)
        if offer is not None and not offer.done.done():
            offer.done.set_result("never read")
        self.refusals.pop(resource_id, None)

    def _refuse(self, resource_id: str, session: RtmpSession, why: str) -> None:
        log.warning("relay: %s refused: %s", resource_id, why)
        self.refusals[resource_id] = why
        session.error = why
        session.close(why)

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        m = _PATH.fullmatch(request.path)
        if request.method != "GET" or m is None:
            return web.Response(status=404 if m is None else 405)
        offer = self._offers.get(m.group(1))
        if offer is None:
            return web.Response(status=404, text="no such session")
        if not hmac.compare_digest(request.headers.get("Authorization", ""), f"Bearer {offer.token}"):
            log.warning("relay: %s asked with a wrong token", m.group(1))
            return web.Response(status=403, text="invalid token")
        if offer.taken:
            return web.Response(status=409, text="already being read")
        offer.taken = True
        resp = web.StreamResponse(status=200, headers={"Content-Type": "video/x-flv", "Cache-Control": "no-store"})
        try:
            await resp.prepare(request)
            await resp.write(HEADER)
            check = FlvCodecCheck()
            async for tag in offer.session.tags():
                if refusal := check(tag):
                    self._refuse(m.group(1), offer.session, refusal)
                    break
                await resp.write(tag.encode())
            await resp.write_eof()
        except ConnectionError:  # the job went away: the publisher has nobody to publish to
            offer.session.close("the job stopped reading")
        except asyncio.CancelledError:
            offer.session.close("the job stopped reading")
            raise
        finally:
            self._offers.pop(m.group(1), None)
            if not offer.done.done():
                offer.done.set_result(offer.session.end_reason)
        return resp
