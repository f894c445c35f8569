"""RtspSource: an RTSP (or RTSPS) server's stream pulled through FFmpeg's RTSP demuxer
(the Go ingress has no RTSP input).

An RTSP server sends its media in real time, so nothing here paces it again (FileSource's
``realtime`` holds every item until its timestamp has come on the graph clock, counted
from the first one: on a live input that only adds the data buffered while the stream was
probed as latency, for the whole session). What differs from a file:

* RTP over the RTSP connection (TCP interleaved) by default: one TCP connection, which
  gets through NAT and firewalls where RTP over UDP often does not, and loses nothing.
  ``?transport=udp`` (or ``udp_multicast``, ``http``, ``https``, ``tcp``) at the end of
  the URL picks FFmpeg's ``rtsp_transport`` instead; that parameter is not sent to the server.
* FFmpeg's socket timeout (its rtsp demuxer's ``timeout`` option, in microseconds:
  FFmpeg 5 removed ``stimeout``) as well as PyAV's own: an unreachable or silent server
  fails the open within ``timeout`` seconds, named (without credentials) in plain words.
* A small probe (the SDP already describes the streams): a live input keeps whatever is
  probed before its first frame as latency (lkmedia.sources.file.LIVE_PROBE).

The stream ends (COMPLETE for an ingress session) when the server ends it: an RTCP BYE on
every stream (gst-rtsp-server at end of stream) or the connection closed (both tried
against gst-rtsp-server; FFmpeg's demuxer then reports end of file).
"""
from __future__ import annotations

import errno
import os
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import av

from .file import LIVE_PROBE, FileSource

RTSP_SCHEMES = ("rtsp", "rtsps")
#: FFmpeg's rtsp_transport values a URL may ask for with ``?transport=``.
TRANSPORTS = ("tcp", "udp", "udp_multicast", "http", "https")


def is_rtsp(url: str | os.PathLike[str]) -> bool:
    return urlsplit(os.fspath(url)).scheme.lower() in RTSP_SCHEMES


def split_transport(url: str) -> tuple[str, str]:
    """``url`` without lkmedia's ``transport`` parameter, and the RTSP transport (tcp unless
    the URL asks for another). An unknown value is left in the URL, for the server."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    transport = "tcp"
    kept = []
    for k, v in query:
        if k.lower() == "transport" and v.lower() in TRANSPORTS:
            transport = v.lower()
        else:
            kept.append((k, v))
    if len(kept) == len(query):
        return url, transport
    return urlunsplit(parts._replace(query=urlencode(kept))), transport


class RtspSource(FileSource):
    """An RTSP(S) URL as a live FileSource: see the module's docstring. ``options`` are
    more FFmpeg rtsp demuxer options (they win over the ones set here)."""

    def __init__(self, url: str | os.PathLike[str], *, timeout: float = 10.0,
                 options: dict[str, str] | None = None, **kw: Any) -> None:
        if kw.pop("realtime", False):
            raise ValueError("an RTSP server paces its stream itself: RtspSource takes no realtime")
        raw = os.fspath(url)
        if not is_rtsp(raw):
            raise ValueError(f"not an rtsp:// or rtsps:// URL: {urlsplit(raw).scheme or raw!r}")
        stripped, transport = split_transport(raw)
        opts = {**LIVE_PROBE, "rtsp_transport": transport,
                "timeout": str(round(timeout * 1_000_000)), **(options or {})}
        super().__init__(stripped, realtime=False, timeout=timeout, options=opts, **kw)
        self.live = True
        self.transport = transport

    def __repr__(self) -> str:
        return f"<RtspSource {self.name} {self.display} over {self.transport}>"

    def _open_container(self) -> Any:
        t0 = time.monotonic()
        try:
            return super()._open_container()
        except av.InvalidDataError:
            # FFmpeg's rtsp demuxer reports its socket timeout (and PyAV's interrupt) as
            # "invalid data": say what happened.
            if time.monotonic() - t0 >= self.timeout * 0.9:
                raise OSError(errno.ETIMEDOUT, f"no answer within {self.timeout:g} s") from None
            raise
