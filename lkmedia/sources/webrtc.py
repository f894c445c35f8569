"""RtcTrackSource: the decoded frames of aiortc remote tracks (a WHIP publisher's) as graph
media, outputs "video" and/or "audio".

aiortc rebases each track's RTP clock to 0 at its first packet, so the two tracks'
timestamps say nothing about each other. Each track is put on the graph clock at the
arrival of its first frame; later frames keep their RTP spacing from there (arrival
jitter does not move them). A track that ends (the peer left) ends its output.
"""
from __future__ import annotations

import asyncio
import logging
from fractions import Fraction
from typing import Any

from ..core import Caps, Source

log = logging.getLogger("lkmedia.sources.webrtc")

VIDEO_TIME_BASE = Fraction(1, 90_000)


class RtcTrackSource(Source):
    """Reads ``tracks`` (kind -> aiortc MediaStreamTrack) until they end or stop."""

    live = True

    def __init__(self, tracks: dict[str, Any], *, name: str | None = None) -> None:
        super().__init__(name)
        if not tracks:
            raise ValueError(f"{self.name}: no track to read")
        self.tracks = dict(tracks)
        for kind in tracks:
            if kind not in ("video", "audio"):
                raise ValueError(f"{self.name}: a track of kind {kind!r} cannot be read")
            self.add_output(kind, Caps(kind))
        self.frames: dict[str, int] = {k: 0 for k in tracks}
        self.first: dict[str, Any] = {}  # kind -> the first frame (what the input is)

    async def run(self) -> None:
        readers = [asyncio.create_task(self._read(kind, track), name=f"{self.name}-{kind}")
                   for kind, track in self.tracks.items()]
        stop = asyncio.create_task(self.wait_stop(), name=f"{self.name}-stop")
        try:
            left = set(readers)  # until a stop, or every track ended
            while left and not stop.done():
                done, _ = await asyncio.wait([stop, *left], return_when=asyncio.FIRST_COMPLETED)
                left -= done
        finally:
            for t in (*readers, stop):
                t.cancel()
            results = await asyncio.gather(*readers, stop, return_exceptions=True)
        for r in results:
            if isinstance(r, Exception) and not isinstance(r, asyncio.CancelledError):
                raise r

    async def _read(self, kind: str, track: Any) -> None:
        from aiortc.mediastreams import MediaStreamError

        assert self.graph is not None
        clock = self.graph.clock
        port = self.outputs[kind]
        offset: Fraction | None = None
        last = -1
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return  # the track ended
            if frame.pts is None or frame.time_base is None:
                continue
            t = frame.pts * frame.time_base
            if offset is None:
                offset = Fraction(clock.now()).limit_denominator(1_000_000) - t
                self.first[kind] = frame
            t += offset
            if kind == "video":
                pts = round(t * 90_000)
                if pts <= last:
                    continue
                frame.pts, frame.time_base = pts, VIDEO_TIME_BASE
            else:
                pts = round(t * frame.sample_rate)
                if pts <= last:
                    continue
                frame.pts, frame.time_base = pts, Fraction(1, frame.sample_rate)
            last = pts
            self.frames[kind] += 1
            await port.emit(frame)

    def stats(self) -> dict[str, Any]:
        return {"frames": dict(self.frames)}
