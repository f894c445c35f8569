"""Publishing into a room (what an ingress session does after its input), against the
ffmpeg CLI doing the same encodes into files.

    python3 bench/run.py --only room-publish [--seconds 20]

Real parts: a DevStack (livekit-server, Redis) and, in a child process, a graph reading a 1280x720 30 fps H.264 + AAC flash/beep clip in real time:
- transcode: decode -> RoomSink (libwebrtc encodes H.264 in 3 simulcast layers, Opus);
  the peer is the ffmpeg CLI decoding the same clip and encoding the three layers
  (1280x720 1.9 Mbps, 640x360 0.45 Mbps, 320x180 0.16 Mbps, libx264 veryfast, no B-frames)
  and Opus, as fast as it can; the ratio is CPU per media second of each.
- passthrough: the clip's own H.264 packets -> RoomSink's EncodedVideoSource (nothing
  encoded; audio still decoded and sent as Opus). Goal (issue 10): <= 0.05 core for video;
  reported with and without the audio.
lkmedia's figure is the CPU the child spent from the graph's start (room joined, tracks
about to publish) to its end, per media second: its imports (~1 CPU s) are not the
session's running cost. The peer is measured whole (``os.wait4``).
"""
from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.peers import RESULT_TAG

GOAL_RATIO = 1.1
GOAL_PASSTHROUGH = 0.05


async def _clip(path: Path, seconds: float) -> None:
    from lkmedia.core import Graph
    from lkmedia.nodes.encode import AudioEncoder, VideoEncoder
    from lkmedia.sinks.file import FileSink
    from lkmedia.sources.synthetic import SyntheticSource

    g = Graph()
    src = g.add(SyntheticSource(width=1280, height=720, fps=30, duration=seconds))
    sink = g.add(FileSink(path))
    g.chain(src.out("video"), VideoEncoder("libx264", width=1280, height=720, fps=30, bitrate=2_000_000,
                                           keyframe_interval=2, profile="baseline"), sink)
    g.chain(src.out("audio"), AudioEncoder("aac", bitrate=128_000), sink)
    await g.run()


def child(mode: str, clip: str, url: str, token: str, audio: str) -> None:
    """The measured process: ``mode`` transcode | passthrough, the clip paced in real time."""
    from lkmedia.core import Graph
    from lkmedia.sinks.room import AudioPublishing, RoomSink, VideoPublishing
    from lkmedia.sources.file import FileSource

    async def run() -> None:
        g = Graph()
        with_audio = audio == "audio"
        sink = g.add(RoomSink(url, token, video=VideoPublishing(codec="h264", simulcast=mode == "transcode"),
                              audio=AudioPublishing() if with_audio else None))
        v = g.add(FileSource(clip, decode=mode == "transcode", audio=False, realtime=True, name="v"))
        g.link(v.out("video"), sink.inp("video"))
        if with_audio:
            a = g.add(FileSource(clip, video=False, realtime=True, name="a"))
            g.link(a.out("audio"), sink.inp("audio"))
        await g.start()
        c0 = time.process_time()  # imports and joining the room are not the session's running cost
        await g.wait()
        print(RESULT_TAG + json.dumps({"run_cpu": time.process_time() - c0}), flush=True)

    asyncio.run(run())


def ffmpeg_layers_peer(clip: Path, out_dir: Path) -> list[str]:
    layers = [(1280, 720, 1900), (640, 360, 450), (320, 180, 160)]
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(clip),
           "-filter_complex", "[0:v]split=3[a][b][c];[b]scale=640:360[b2];[c]scale=320:180[c2]"]
    for (w, h, kbps), label in zip(layers, ("[a]", "[b2]", "[c2]")):
        cmd += ["-map", label, "-c:v", "libx264", "-preset", "veryfast", "-b:v", f"{kbps}k", "-bf", "0",
                "-g", "60", str(out_dir / f"layer_{w}x{h}.mp4")]
    cmd += ["-map", "0:a", "-c:a", "libopus", "-b:a", "96k", str(out_dir / "audio.ogg")]
    return cmd


def bench_room_publish(ctx: Any, row: Any) -> list[Any]:
    from bench.livekit_rig import installed
    from lkmedia.dev.stack import DevStack
    from lkmedia.probe import probe

    why = installed()
    if why:
        return [row("room-publish", "", "", status=f"skipped: {why}")]
    work = ctx.work / "room-publish"
    work.mkdir(exist_ok=True)
    clip = ctx.cache / f"room_publish_720p30_baseline_{ctx.seconds:g}s.mp4"
    if not clip.exists():
        asyncio.run(_clip(clip, ctx.seconds))
    media = probe(str(clip)).duration or ctx.seconds
    d: dict[str, Any] = ctx.details.setdefault("room-publish", {})
    rows = []
    with DevStack(workdir=work / "stack") as stack:
        runs = {}
        for mode, audio in (("transcode", "audio"), ("passthrough", "audio"), ("passthrough", "none")):
            cmd = [sys.executable, "-m", "bench.room_publish", mode, str(clip), stack.url,
                   stack.token(f"{mode}-{audio}", f"bench-{mode}-{audio}"), audio]
            m = ctx.measure(cmd, lkmedia=True)
            run_cpu = m.report.get("run_cpu") if m.ok else None
            runs[(mode, audio)] = run_cpu / media if run_cpu is not None else None
            d[f"{mode}_{audio}"] = {"process_cpu": round(m.cpu, 3), "run_cpu": run_cpu, "ok": m.ok,
                                    "media_s": media}
    peer = ctx.measure(ffmpeg_layers_peer(clip, work))
    peer_rate = peer.cpu / media if peer.ok else None
    lk = runs[("transcode", "audio")]
    ratio = lk / peer_rate if lk and peer_rate else None
    rows.append(row("room-publish/transcode-3-layers", "CPU s per media s: a 720p30 H.264+AAC input decoded and "
                    "published with 3 simulcast H.264 layers + Opus (libwebrtc encodes), against the ffmpeg CLI "
                    "encoding the same three layers + Opus to files", "cpu s / s", lkmedia=round(lk, 3) if lk else None,
                    peer_name="ffmpeg CLI", peer=round(peer_rate, 3) if peer_rate else None,
                    ratio=round(ratio, 3) if ratio else None, goal=f"ratio <= {GOAL_RATIO}",
                    status="pass" if ratio is not None and ratio <= GOAL_RATIO else "fail",
                    note="the peer runs as fast as it can; lkmedia in real time, with WebRTC send and pacing"))
    pv, pa = runs[("passthrough", "none")], runs[("passthrough", "audio")]
    rows.append(row("room-publish/passthrough", "CPU s per media s: the input's own H.264 into the room "
                    "(EncodedVideoSource, no decode or encode), video only; with AAC -> Opus in the note",
                    "cpu s / s", lkmedia=round(pv, 4) if pv else None, goal=f"<= {GOAL_PASSTHROUGH}",
                    status="pass" if pv is not None and pv <= GOAL_PASSTHROUGH else "fail",
                    note=f"with audio decoded and sent as Opus: {pa:.3f}" if pa else "with audio: failed"))
    return rows


if __name__ == "__main__":
    child(*sys.argv[1:6])
