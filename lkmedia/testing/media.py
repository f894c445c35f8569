"""Test clips made with the ffmpeg CLI: H.264 + AAC from lavfi's test pattern and a sine."""
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
