"""Test clips: H.264 + AAC from lavfi's test pattern and a sine (the ffmpeg CLI), and the
flash/beep clip whose A/V offset lkmedia.probe measures (lkmedia's own graph)."""
from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path


def av_clip(path: str | Path, seconds: float, *, size: str = "320x240", rate: int = 25, pattern: str = "testsrc",
            sample_rate: int = 48_000, channels: int = 2, gop: int | None = None,
            extra: Sequence[str] = ()) -> Path:
    """``seconds`` of ``pattern`` video (libx264 ultrafast, yuv420p) and a 1 kHz sine (AAC)
    into ``path`` (the container follows the extension: .mp4, .flv, ...)."""
    args = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"{pattern}=size={size}:rate={rate}",
            "-f", "lavfi", "-i", f"sine=frequency=1000:sample_rate={sample_rate}", "-t", f"{seconds:g}",
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", str(gop or rate),
            "-c:a", "aac", "-ac", str(channels), *extra, str(path)]
    subprocess.run(args, check=True, timeout=120)
    return Path(path)


def flash_beep_clip(path: str | Path, seconds: float, *, width: int = 1280, height: int = 720, fps: int = 30) -> Path:
    """``seconds`` of SyntheticSource's flash/beep A/V: H.264 (libx264, no B-frames, a key
    frame a second) and AAC, into ``path`` (.mp4, .flv, ...)."""
    import asyncio

    from ..core import Graph
    from ..nodes.encode import AudioEncoder, VideoEncoder
    from ..sinks.file import FileSink
    from ..sources.synthetic import SyntheticSource

    async def make() -> None:
        g = Graph()
        src = g.add(SyntheticSource(width=width, height=height, fps=fps, duration=seconds))
        sink = g.add(FileSink(path))
        g.chain(src.out("video"), VideoEncoder("libx264", width=width, height=height, fps=fps, bitrate=2_000_000,
                                               keyframe_interval=1, profile="baseline"), sink)
        g.chain(src.out("audio"), AudioEncoder("aac", bitrate=128_000), sink)
        await g.run()

    asyncio.run(make())
    return Path(path)
