"""The input side of a session: the source node an IngressSession (lkmedia.ingress.session)
runs into the room.

An RTMP publish arrives as FLV from the service: over its loopback relay in a job process
(lkmedia.service.ingress_relay, read by FileSource), or on a pipe in the service's own
process (lkmedia.sources.flv.FlvSource). A URL is pulled and paced in real time
(lkmedia.ingress.session.url_source).
"""
from __future__ import annotations

from ..core import Source
from ..sources.file import LIVE_PROBE, FileSource
from ..sources.flv import FlvSource
from .session import url_source
from .spec import IngressLaunch


def input_source(launch: IngressLaunch) -> Source:
    """The source node for the session's input (not yet added to a graph). RTMP passthrough
    (``spec.transcode`` off): its packets, undecoded (lkmedia.ingress.session passes the
    video through and decodes the audio)."""
    spec = launch.spec
    decode = spec.transcode
    if spec.input == "rtmp":
        if launch.relay_url:  # a job process: the service relays the publish over loopback HTTP
            return FileSource(launch.relay_url, decode=decode, name="rtmp",
                              options={"headers": launch.relay_headers, **LIVE_PROBE})
        if launch.flv_fd < 0:
            raise ValueError(f"{spec.ingress_id}: an RTMP session needs the service's relay or FLV pipe")
        return FlvSource(launch.flv_fd, decode=decode, name="rtmp")
    if spec.input == "url":
        return url_source(spec.url)
    raise ValueError(f"{spec.ingress_id}: no media source for {spec.input} input in a job process yet")
