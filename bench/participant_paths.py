"""Participant egress transcoding by two ways in, in this one process: the same graph
(frame-rate converter, x264 720p30, mixer, AAC, MP4) fed by ``livekit.rtc``'s decoded
frames (TrackSource: what a participant egress uses today) or by the encoded subscriber's
packets decoded by FFmpeg (EncodedTrackSource + Decoder). The publisher is the egress
bench's (720p30 VP8 at 1.7 Mbps and Opus), in a process of its own.

    python3 -m bench.participant_paths --seconds 30 --runs 2

Prints one JSON line per run: this process's CPU seconds (user + sys) per second over the
steady part, and what the file holds. An experiment, not a bench row: the participant
egress takes the encoded way (for VP8 and H.264 video) since 54d7784.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from bench.egress import IDENTITY, ROOM, _wait_published, make_vp8_input
from bench.egress_procs import Child, _env
from bench.peers import ROOT
from lkmedia.core import Graph
from lkmedia.dev.stack import DevStack
from lkmedia.nodes.audio_mix import AudioMixer
from lkmedia.nodes.convert import FpsConverter
from lkmedia.nodes.decode import Decoder
from lkmedia.nodes.encode import AudioEncoder, VideoEncoder
from lkmedia.probe import probe
from lkmedia.sinks.file import FileSink
from lkmedia.sources.livekit import TrackSource
from lkmedia.sources.livekit_encoded import EncodedTrackSource


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _graph(way: str, url: str, token: str, out: Path) -> tuple[Graph, Any]:
    g = Graph()
    fps = g.add(FpsConverter(30, owns_input=True, name="fps"))
    mixer = g.add(AudioMixer(sample_rate=48_000, channels=2, live=True, name="mixer"))
    src: Any
    if way == "rtc":
        src = TrackSource(url, token, participant_identity=IDENTITY, name="tracks")
        g.link(src.out("video"), fps)
        g.link(src.out("audio"), mixer)
    else:
        src = EncodedTrackSource(url, token, participant_identity=IDENTITY, video_codec="vp8", name="tracks")
        g.chain(src.out("video"), Decoder(name="video_decoder"), fps)
        g.chain(src.out("audio"), Decoder(name="audio_decoder"), mixer)
    sink = FileSink(str(out), name="file", start_at_zero=True)
    g.chain(fps, VideoEncoder("libx264", width=1280, height=720, fps=30, bitrate=3_000_000, name="video_encoder"),
            sink)
    g.chain(mixer, AudioEncoder("aac", bitrate=128_000, name="audio_encoder"), sink)
    return g, src


async def _run(way: str, stack: DevStack, work: Path, seconds: float) -> dict[str, Any]:
    out = work / f"{way}.mp4"
    g, _ = _graph(way, stack.url, stack.token(f"egress-{way}", ROOM), out)
    task = asyncio.create_task(g.run())
    await asyncio.sleep(8)  # (joined, subscribed, encoders warm)
    c0, t0 = _cpu(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu = (_cpu() - c0) / (time.monotonic() - t0)
    errors = await asyncio.wait_for(g.stop(), 30)
    await asyncio.gather(task, return_exceptions=True)
    p = probe(str(out))
    v = p.stream("video")
    return {"way": way, "cpu_s_per_s": round(cpu, 4), "errors": [str(e) for e in errors],
            "video_frames": v.frames, "duration_s": round(p.duration or 0.0, 2)}


async def main(seconds: float, runs: int) -> None:
    work = ROOT / "bench" / "results" / "participant_paths"
    work.mkdir(parents=True, exist_ok=True)
    inp = make_vp8_input(ROOT / "bench" / "results" / "inputs", 20)
    stack = DevStack(workdir=work / "stack")
    stack.start()
    pub = Child([sys.executable, "-m", "bench.egress", "publish", "--url", stack.url, "--room", ROOM,
                 "--video-file", str(inp)], work / "publisher.log", _env(LKM_BENCH_TOKEN=stack.token(IDENTITY, ROOM)))
    try:
        async with stack.api() as lkapi:
            await _wait_published(lkapi, pub, stack=stack)
        for _ in range(runs):
            for way in ("rtc", "encoded"):
                print(json.dumps(await _run(way, stack, work, seconds)), flush=True)
    finally:
        pub.stop(10)
        stack.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    asyncio.run(main(args.seconds, args.runs))
