"""Layer three: a launched spec -> the graph that takes its input.

The input side is here: an RTMP publish arrives as FLV from the service, over its loopback
relay in a job process (lkmedia.service.ingress_relay, read by FileSource) or on a pipe in
the same process (lkmedia.sources.flv.FlvSource); a URL is pulled and paced in real time
(lkmedia.sources.file.FileSource). Decoded (transcoding) or as packets (passthrough).
What the frames feed, the room publisher with its simulcast layers and Opus audio, is
linked by the job to ``Recipe.video`` / ``Recipe.audio``.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..core import Graph, OutputPort, Source
from ..sources.file import FileSource
from ..sources.flv import FlvSource
from .spec import IngressLaunch

#: FFmpeg options for a URL pull: reconnect on a dropped HTTP connection, as a live input should.
URL_OPTIONS = {"reconnect": "1", "reconnect_streamed": "1", "reconnect_delay_max": "5"}


@dataclass
class Recipe:
    graph: Graph
    source: Source
    video: OutputPort | None  # None: the input has no video (known once it is open)
    audio: OutputPort | None


def input_source(launch: IngressLaunch, decode: bool = True) -> Source:
    """The source node for the session's input (not yet added to a graph)."""
    spec = launch.spec
    if spec.input == "rtmp":
        if launch.relay_url:  # a job process: the service relays the publish over loopback HTTP
            return FileSource(launch.relay_url, decode=decode, options={"headers": launch.relay_headers}, name="rtmp")
        if launch.flv_fd < 0:
            raise ValueError(f"{spec.ingress_id}: an RTMP session needs the service's relay or FLV pipe")
        return FlvSource(launch.flv_fd, decode=decode, name="rtmp")
    if spec.input == "url":
        options = URL_OPTIONS if spec.url.startswith(("http://", "https://")) else {}
        return FileSource(spec.url, decode=decode, realtime=True, options=options, name="url")
    raise ValueError(f"{spec.ingress_id}: no media source for {spec.input} input in a job process yet")


def build_recipe(launch: IngressLaunch, decode: bool = True) -> Recipe:
    """A graph with the session's input in it; the job links its outputs."""
    g = Graph()
    src = input_source(launch, decode)
    g.add(src)
    return Recipe(g, src, src.outputs.get("video"), src.outputs.get("audio"))
