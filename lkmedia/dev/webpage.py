"""Web pages to record, for tests, benches and trying the Chrome engine: a flash/beep clip
playing full screen in a ``<video>`` (its picture has a moving bar; each second a white
frame and a 1 kHz beep start together, which lkmedia.probe finds to measure A/V offset),
and a local HTTP server for a directory of pages.
"""
from __future__ import annotations

import os
from pathlib import Path

from aiohttp import web

from ..core import Graph
from ..nodes.encode import AudioEncoder, VideoEncoder
from ..sinks.file import FileSink
from ..sources.synthetic import SyntheticSource

VIDEO_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><style>
html, body {{ margin: 0; width: 100%; height: 100%; overflow: hidden; background: #000; }}
video {{ width: 100vw; height: 100vh; object-fit: fill; display: block; }}
</style></head><body>
<video id="v" src="{clip}#t=0.5" autoplay playsinline></video>
<script>
const v = document.getElementById("v");
v.addEventListener("playing", () => console.log("START_RECORDING"), {{ once: true }});
v.addEventListener("ended", () => console.log("END_RECORDING"));
</script></body></html>
"""


async def flash_beep_clip(path: str | os.PathLike[str], seconds: float, *, width: int = 640, height: int = 360,
                          fps: int = 30, flash_frames: int = 1) -> Path:
    """A WebM (VP8 + Opus) of the synthetic flash/beep source (lkmedia.sources.synthetic)."""
    g = Graph()
    src = SyntheticSource(width=width, height=height, fps=fps, duration=seconds, flash_frames=flash_frames,
                          name="src")
    sink = FileSink(str(path), name="file")
    venc = VideoEncoder("libvpx", width=width, height=height, fps=fps, bitrate=1_500_000, keyframe_interval=1.0,
                        name="venc")
    aenc = AudioEncoder("opus", bitrate=96_000, name="aenc")
    g.add(src)
    g.link(src.out("video"), venc)
    g.link(src.out("audio"), aenc)
    g.link(venc, sink)
    g.link(aenc, sink)
    errors = await g.run()
    if errors:
        raise RuntimeError(f"flash/beep clip: {errors[0]}")
    return Path(path)


def write_video_page(directory: str | os.PathLike[str], clip: str = "clip.webm", name: str = "index.html") -> Path:
    """A page playing ``clip`` full screen with sound from 0.5 s in (a recording that starts
    with the first frame does not start in the middle of a flash), START_RECORDING once it
    plays and END_RECORDING when it ends."""
    p = Path(directory) / name
    p.write_text(VIDEO_PAGE.format(clip=clip))
    return p


class PageServer:
    """Serves ``directory`` on 127.0.0.1 (a free port); ``url(name)`` addresses a file."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = str(directory)
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> PageServer:
        app = web.Application()
        app.router.add_static("/", self.directory)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    def url(self, name: str = "index.html") -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> PageServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
