"""A recording survives SIGKILL: a child process records a live graph to MP4, is killed
after 10 s of recording, and the file must still play at least 9 of them, cleanly.
A clean stop instead proves that the fragmented file is finalised into a faststart MP4."""
from __future__ import annotations

import os
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lkmedia.probe import decode_errors, playable_seconds, probe

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RECORD_SECONDS = 10.0

# The child records until killed (or until it receives SIGTERM: then it stops cleanly).
# It prints one line per 0.1 s: seconds of media every stream has reached in the sink
# (what the encoders have handed over; frames still inside x264 are not recorded yet).
CHILD = r"""
import asyncio, signal, sys, time
from lkmedia.core import Graph
from lkmedia.nodes.encode import AudioEncoder, VideoEncoder
from lkmedia.sinks.file import FileSink
from lkmedia.sources.synthetic import SyntheticSource

async def main(path: str) -> None:
    g = Graph()
    src = SyntheticSource(width=640, height=360, fps=30, live=True)
    sink = FileSink(path)
    g.chain(src.out("video"), VideoEncoder("libx264", width=640, height=360, fps=30,
            bitrate=1_000_000, keyframe_interval=4), sink)
    g.chain(src.out("audio"), AudioEncoder("aac"), sink)
    await g.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set():
        wall = (time.time_ns() - sink.started_at) / 1e9 if sink.started_at else 0.0
        print(f"written {sink.stats()['complete_duration']:.3f} wall {wall:.3f}", flush=True)
        try:
            await asyncio.wait_for(stop.wait(), 0.1)
        except asyncio.TimeoutError:
            pass
    await g.stop()
    print(f"result {sink.result}", flush=True)

asyncio.run(main(sys.argv[1]))
"""


def _record(path: Path, sig: int, seconds: float = RECORD_SECONDS) -> tuple[float, str]:
    """Run the child until the sink has written ``seconds`` of media, then send ``sig``.
    Returns (media seconds the sink had written when signalled, the child's output)."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None
    written = 0.0
    lines: list[str] = [""]
    deadline = time.monotonic() + seconds + 30
    try:
        while written < seconds:
            if time.monotonic() > deadline or child.poll() is not None:
                err = child.stderr.read() if child.poll() is not None and child.stderr else ""
                raise AssertionError(f"child wrote only {written:.2f} s: {''.join(lines[-3:])} {err}")
            ready, _, _ = select.select([child.stdout], [], [], 1.0)
            if not ready:
                continue
            line = child.stdout.readline()
            lines.append(line)
            if line.startswith("written "):
                written = float(line.split()[1])
        child.send_signal(sig)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return written, lines[-1] + out + err


def _top_level_boxes(path: Path) -> list[str]:
    boxes: list[str] = []
    with open(path, "rb") as f:
        while len(h := f.read(8)) == 8:
            size, kind = struct.unpack(">I4s", h)
            if size == 1:
                size = struct.unpack(">Q", f.read(8))[0] - 8
            if size == 0:
                boxes.append(kind.decode())
                break
            boxes.append(kind.decode())
            f.seek(size - 8, 1)
    return boxes


def test_sigkill_keeps_nine_of_ten_seconds(tmp_path: Path) -> None:
    path = tmp_path / "crash.mp4"
    written, last = _record(path, signal.SIGKILL)
    playable = playable_seconds(str(path))
    print(f"killed at: {last.strip()}; {playable:.2f} s play")
    assert playable >= 9.0, f"only {playable:.2f} s of {written:.2f} s survived SIGKILL"
    assert decode_errors(str(path)) == ""
    p = probe(str(path))
    assert p.stream("video").codec == "h264" and p.stream("audio").codec == "aac"
    assert "moof" in _top_level_boxes(path)  # it is the fragmented file, not finalised


def test_clean_stop_finalises_to_faststart(tmp_path: Path) -> None:
    path = tmp_path / "clean.mp4"
    written, out = _record(path, signal.SIGTERM, seconds=4.0)
    assert "finalized=True" in out, out
    boxes = _top_level_boxes(path)
    assert "moof" not in boxes and "mfra" not in boxes, boxes
    assert boxes.index("moov") < boxes.index("mdat"), boxes
    p = probe(str(path))
    assert p.stream("video").codec == "h264" and p.stream("audio").codec == "aac"
    assert p.duration is not None and p.duration >= written - 0.2
    assert decode_errors(str(path)) == ""
    # No temp file is left beside it.
    assert sorted(os.listdir(tmp_path)) == ["clean.mp4"]
