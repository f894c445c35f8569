"""A WHIP publisher nobody here wrote: FFmpeg's own WHIP muxer (FFmpeg 8, through PyAV),
pushing the synthetic flash/beep A/V as H.264 (baseline, no B-frames) and Opus in real
time, then closing (which DELETEs its WHIP resource).

    python3 -m lkmedia.dev.whip_client URL SECONDS [WIDTHxHEIGHT]

The bearer token, if any, comes in the environment (LKM_WHIP_TOKEN), never in argv.
Exit status 0 when it sent everything; the error otherwise.
"""
from __future__ import annotations

import os
import sys
import time
from fractions import Fraction

import av
import av.logging

from ..sources.synthetic import SyntheticSource


def push(url: str, seconds: float, width: int = 640, height: int = 360, token: str | None = None) -> int:
    if os.environ.get("LKM_WHIP_DEBUG"):
        import logging
        logging.basicConfig(level=logging.DEBUG)
        av.logging.set_level(av.logging.DEBUG)
    gen = SyntheticSource(width=width, height=height, fps=30, sample_rate=48_000, channels=2,
                          audio_frame_samples=960)
    out = av.open(url, "w", format="whip", options={"authorization": token} if token else {}, timeout=10)
    try:
        v = out.add_stream("libx264", rate=30, options={
            "preset": "veryfast", "tune": "zerolatency", "profile": "baseline", "bf": "0", "g": "30",
            "threads": "1"})  # one slice a frame
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        a = out.add_stream("libopus", rate=48_000, layout="stereo")
        t0 = time.monotonic()
        i = s = 0
        while (now := time.monotonic() - t0) < seconds:
            while i / 30 <= now:
                f = gen.video_frame(i)
                f.pts, f.time_base = i, Fraction(1, 30)
                out.mux(v.encode(f))
                i += 1
            while s / 48_000 <= now:
                af = gen.audio_frame(s)
                af.pts, af.time_base = s, Fraction(1, 48_000)
                out.mux(a.encode(af))
                s += 960
            time.sleep(0.004)
        out.mux(v.encode(None))
        out.mux(a.encode(None))
    finally:
        out.close()
    return i


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    size = sys.argv[3] if len(sys.argv) > 3 else "640x360"
    w, h = (int(x) for x in size.split("x"))
    try:
        frames = push(sys.argv[1], float(sys.argv[2]), w, h, os.environ.get("LKM_WHIP_TOKEN"))
    except (av.FFmpegError, OSError) as e:
        print(f"whip_client: {e}", file=sys.stderr)
        return 1
    print(f"whip_client: sent {frames} frames", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
