"""What a recovered (unfinished) file reports as its duration: the span its streams play."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from lkmedia.egress.recovery import media_seconds


def test_a_partial_file_reports_the_span_of_all_its_streams(tmp_path: Path) -> None:
    """Video from 0 to 1.0 s, audio on to 1.5 s (a worker killed mid-recording: the last
    video fragment lost, the audio written further): 1.5 s, as the file plays, not the
    video's 1.0 (CI: 17.99994 s reported for a file that plays 19.09)."""
    path = tmp_path / "partial.mp4"
    with av.open(str(path), "w", options={"movflags": "frag_keyframe+empty_moov"}) as c:
        v = c.add_stream("libx264", rate=30)
        v.width, v.height, v.pix_fmt = 64, 64, "yuv420p"
        a = c.add_stream("aac", rate=48_000)
        for i in range(30):
            f = av.VideoFrame(64, 64, "yuv420p")
            for p in f.planes:
                np.frombuffer(p, np.uint8)[:] = 100
            f.pts, f.time_base = i, Fraction(1, 30)
            c.mux(v.encode(f))
        c.mux(v.encode(None))
        for i in range(0, 72_000, 1024):
            s = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            s.sample_rate, s.pts, s.time_base = 48_000, i, Fraction(1, 48_000)
            c.mux(a.encode(s))
        c.mux(a.encode(None))
    assert 1.45 <= media_seconds(str(path)) <= 1.65, media_seconds(str(path))  # (AAC's priming and last frame)
