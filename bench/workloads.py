"""Benchmark workloads, run as child processes: ``python3 -m bench.workloads <name> ...``.

Each prints one ``BENCH_RESULT {json}`` line with what only the inside can see (CPU spent
importing, CPU of the graph run, per-node figures); the parent measures the whole process.
The lkmedia modules a workload needs are imported inside it, so a missing one fails that
workload only.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lkmedia.core import EOS, Caps, Graph, Processor, Sink, Source

RESULT_TAG = "BENCH_RESULT "


def emit_result(**fields: Any) -> None:
    print(RESULT_TAG + json.dumps(fields, default=str), flush=True)


async def run_graph(g: Graph) -> tuple[float, float]:
    """Run ``g`` to the end; CPU and wall seconds of the run itself."""
    c0, w0 = time.process_time(), time.monotonic()
    _SETUP["cpu"] = c0
    await g.run()
    return time.process_time() - c0, time.monotonic() - w0


#: CPU seconds the process had used when the graph started (interpreter, imports, setup).
_SETUP: dict[str, float] = {"cpu": 0.0}


# -- overhead: the engine alone ----------------------------------------------------
class Count(Source):
    def __init__(self, n: int) -> None:
        super().__init__("count")
        self.n = n
        self.add_output("out", Caps("video"))

    async def run(self) -> None:
        emit = self.outputs["out"].emit
        for i in range(self.n):
            await emit(i)


class Pass(Processor):
    """The default Processor: passes each item on."""


class Drain(Sink):
    def __init__(self) -> None:
        super().__init__("drain")
        self.items = 0

    async def run(self) -> None:
        for port in list(self.inputs.values()):
            while (await port.get()) is not EOS:
                self.items += 1


def overhead(args: argparse.Namespace) -> None:
    g = Graph()
    nodes: list[Any] = [Count(args.items)]
    nodes += [Pass(f"pass{i}") for i in range(args.chain)]
    sink = Drain()
    g.chain(*nodes, sink)
    cpu, wall = asyncio.run(run_graph(g))
    if sink.items != args.items:
        raise SystemExit(f"overhead: {sink.items} of {args.items} items arrived")
    emit_result(setup_cpu=_SETUP["cpu"], run_cpu=cpu, run_wall=wall, items=args.items,
                edges=args.chain + 1)


# -- helpers for the media workloads -------------------------------------------------
def _timed(node: Any, attr: str, acc: dict[str, float]) -> None:
    """Wrap ``node.<attr>`` to add the thread CPU it spends to ``acc["cpu"]``."""
    fn: Callable[..., Any] = getattr(node, attr)

    def wrapper(*a: Any, **kw: Any) -> Any:
        c0 = time.thread_time()
        try:
            return fn(*a, **kw)
        finally:
            acc["cpu"] += time.thread_time() - c0
            acc["calls"] += 1

    setattr(node, attr, wrapper)


def _stats(g: Graph) -> dict[str, Any]:
    try:
        return g.stats()
    except Exception as e:  # noqa: BLE001 - stats are a bonus; never fail the run on them
        return {"error": str(e)}


# -- media workloads ----------------------------------------------------------------
def _video_encoder(threads: int) -> Any:
    from bench.peers import FPS, GOP, VIDEO_KBPS, X264_PRESET
    from lkmedia.nodes.encode import VideoEncoder
    # VideoEncoder uses x264 frame threads, as the ffmpeg CLI and x264enc do.
    return VideoEncoder("libx264", width=1280, height=720, fps=FPS, bitrate=VIDEO_KBPS * 1000,
                        keyframe_interval=GOP / FPS, speed=X264_PRESET, threads=threads)


def _audio_encoder() -> Any:
    from bench.peers import AUDIO_KBPS
    from lkmedia.nodes.encode import AudioEncoder
    return AudioEncoder("aac", bitrate=AUDIO_KBPS * 1000)


def _file_source(path: str, audio: bool = True) -> Any:
    from lkmedia.sources.file import FileSource
    return FileSource(path, audio=audio)


def _out(src: Any, media: str) -> Any:
    return src.out(media) if media in src.outputs else src.out()


def transcode(args: argparse.Namespace) -> None:
    """720p H.264 + AAC file -> decode -> x264 + AAC -> MP4 (FileSink)."""
    from lkmedia.sinks.file import FileSink
    g = Graph()
    src = g.add(_file_source(args.input))
    sink = FileSink(args.output)
    g.chain(_out(src, "video"), _video_encoder(args.threads), sink)
    g.chain(_out(src, "audio"), _audio_encoder(), sink)
    cpu, wall = asyncio.run(run_graph(g))
    emit_result(setup_cpu=_SETUP["cpu"], run_cpu=cpu, run_wall=wall, stats=_stats(g))


def tee(args: argparse.Namespace) -> None:
    """One decode and one encode feeding every output in ``--outputs``."""
    g = Graph()
    src = g.add(_file_source(args.input))
    venc, aenc = _video_encoder(args.threads), _audio_encoder()
    g.link(_out(src, "video"), venc)
    g.link(_out(src, "audio"), aenc)
    out = Path(args.outdir)
    for kind in args.outputs.split(","):
        if kind == "mp4":
            from lkmedia.sinks.file import FileSink
            sink: Any = FileSink(str(out / "tee.mp4"))
        elif kind == "flv":  # the stand-in for RTMP when no server runs here
            from lkmedia.sinks.file import FileSink
            sink = FileSink(str(out / "tee.flv"))
        elif kind == "hls":
            from lkmedia.sinks.segments import HLSSink
            sink = HLSSink(str(out / "hls"), segment_duration=4.0)
        elif kind == "rtmp":
            from lkmedia.sinks.stream import StreamSink
            if not args.rtmp_url:
                raise SystemExit("tee: --rtmp-url is needed for the rtmp output")
            sink = StreamSink(args.rtmp_url)
        else:
            raise SystemExit(f"tee: unknown output {kind!r} (mp4, hls, rtmp, flv)")
        g.link(venc, sink)
        g.link(aenc, sink)
    cpu, wall = asyncio.run(run_graph(g))
    emit_result(setup_cpu=_SETUP["cpu"], run_cpu=cpu, run_wall=wall, errors=[str(e) for e in g.errors],
                stats=_stats(g))


# -- composite: four tiles -> 720p grid -> H.264 -------------------------------------
#: Compositor methods that do the per-frame work, first found is timed.
_COMPOSE_METHODS = ("compose", "_compose", "render", "_render", "_compose_frame", "_draw")


def composite(args: argparse.Namespace) -> None:
    from bench.peers import FPS
    from lkmedia.nodes.compose import Compositor
    from lkmedia.sinks.file import FileSink
    g = Graph()
    comp = g.add(Compositor(width=1280, height=720, fps=FPS, layout="grid"))
    timed = {"cpu": 0.0, "calls": 0}
    method = next((m for m in _COMPOSE_METHODS if callable(getattr(comp, m, None))), None)
    if method is not None:
        _timed(comp, method, timed)
    for p in args.inputs:
        g.link(_out(g.add(_file_source(p, audio=False)), "video"), comp)
    sink = FileSink(args.output)
    g.chain(comp, _video_encoder(args.threads), sink)
    cpu, wall = asyncio.run(run_graph(g))
    st = _stats(g)
    emit_result(setup_cpu=_SETUP["cpu"], run_cpu=cpu, run_wall=wall, timed_method=method,
                compose_cpu=timed["cpu"], compose_calls=timed["calls"], compositor_stats=comp.stats(),
                frames_out=st.get(sink.name, {}).get("packets"), stats=st)


# -- mix: 16-input audio mixer (CPU measured inside: frames are made before the run) ----
class Replay(Source):
    """Emits pre-made frames, so that making them is not in the measured run."""

    def __init__(self, name: str, frames: list[Any], caps: Caps) -> None:
        super().__init__(name)
        self.frames = frames
        self.add_output("out", caps)

    async def run(self) -> None:
        emit = self.outputs["out"].emit
        for f in self.frames:
            await emit(f)


def _tone(freq: float, seconds: float, rate: int = 48_000, frame: int = 960) -> list[Any]:
    from fractions import Fraction

    import av
    import numpy as np
    out = []
    for k in range(round(seconds * rate / frame)):
        t = (k * frame + np.arange(frame)) / rate
        pcm = (0.1 * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16)
        f = av.AudioFrame.from_ndarray(np.repeat(pcm, 2)[None, :], format="s16", layout="stereo")
        f.sample_rate, f.pts, f.time_base = rate, k * frame, Fraction(1, rate)
        out.append(f)
    return out


class Steps:
    """Awaits a coroutine, adding the thread CPU of each of its steps to ``acc``."""

    def __init__(self, coro: Any, acc: dict[str, float]) -> None:
        self.coro, self.acc = coro, acc

    def __await__(self) -> Any:
        coro, acc, tt = self.coro, self.acc, time.thread_time
        value: Any = None
        exc: BaseException | None = None
        while True:
            t0 = tt()
            try:
                step = coro.throw(exc) if exc is not None else coro.send(value)
            except StopIteration as e:
                return e.value
            finally:
                acc["cpu"] += tt() - t0
            try:
                value, exc = (yield step), None
            except BaseException as e:  # noqa: BLE001 - handed to the coroutine
                value, exc = None, e

def timed(node: Any, acc: dict[str, float]) -> None:
    run, offload = node.run, node.offload

    async def timed_run() -> None:
        await Steps(run(), acc)

    async def timed_offload(fn: Callable[..., Any], *a: Any) -> Any:
        def call(*a: Any) -> Any:  # on the node's thread: not in its coroutine's steps
            c0 = time.thread_time()
            try:
                return fn(*a)
            finally:
                acc["cpu"] += time.thread_time() - c0
        return await offload(call, *a)

    node.run, node.offload = timed_run, timed_offload


def mix(args: argparse.Namespace) -> None:
    """run_cpu: the whole graph (16 replaying sources + mixer + sink). mixer_cpu: the
    mixer's own work, timed where it runs (its coroutine steps on the loop thread plus
    the mixing it offloads), in a second run; sources_cpu and sink_cpu come from that
    run too, so that the sources' cost is reported beside it, not folded into it.
    baseline_cpu (the graph without the mixer) is kept for comparison only: its sink
    takes all 16 x N frames, so subtracting it credits the mixer with that sink's work."""
    caps = Caps("audio", sample_rate=48_000, layout="stereo", sample_fmt="s16")
    tones = [_tone(220.0 * (k + 1), args.seconds) for k in range(4)]  # shared, never mutated

    def graph(with_mixer: bool, parts: dict[str, dict[str, float]] | None = None) -> tuple[Graph, Drain]:
        g = Graph()
        sink = Drain()
        mixer: Any = None
        if with_mixer:
            from lkmedia.nodes.audio_mix import AudioMixer
            mixer = g.add(AudioMixer(sample_rate=48_000, channels=2))
            g.link(mixer, sink)
        for i in range(args.inputs):
            src = g.add(Replay(f"in{i}", tones[i % len(tones)], caps))
            g.link(src, mixer or sink)
            if parts is not None:
                timed(src, parts["sources"])
        if parts is not None:
            timed(sink, parts["sink"])
            if mixer is not None:
                timed(mixer, parts["mixer"])
        return g, sink

    base_g, base_sink = graph(False)
    base_cpu, _ = asyncio.run(run_graph(base_g))
    g, sink = graph(True)
    cpu, wall = asyncio.run(run_graph(g))
    parts: dict[str, dict[str, float]] = {k: {"cpu": 0.0} for k in ("mixer", "sources", "sink")}
    tg, tsink = graph(True, parts)
    timed_cpu, _ = asyncio.run(run_graph(tg))
    if sink.items != tsink.items:
        raise SystemExit(f"mix: the timed run made {tsink.items} frames, the plain one {sink.items}")
    emit_result(run_cpu=cpu, run_wall=wall, baseline_cpu=base_cpu, media_seconds=args.seconds,
                mixer_cpu=parts["mixer"]["cpu"], sources_cpu=parts["sources"]["cpu"],
                sink_cpu=parts["sink"]["cpu"], timed_run_cpu=timed_cpu,
                mixer_realtime=args.seconds / parts["mixer"]["cpu"] if parts["mixer"]["cpu"] > 0 else None,
                inputs=args.inputs, out_frames=sink.items, in_frames=base_sink.items, stats=_stats(g))


# -- entry point ------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python3 -m bench.workloads")
    sub = ap.add_subparsers(dest="name", required=True)
    p = sub.add_parser("overhead", help="a chain of pass-through processors on small items")
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--chain", type=int, default=0)
    p.set_defaults(fn=overhead)
    p = sub.add_parser("transcode", help="H.264 + AAC file to MP4 (x264 + AAC)")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(fn=transcode)
    p = sub.add_parser("tee", help="one encode feeding several outputs")
    p.add_argument("--input", required=True)
    p.add_argument("--outdir", required=True)
    p.add_argument("--outputs", default="mp4,hls,rtmp")
    p.add_argument("--rtmp-url", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(fn=tee)
    p = sub.add_parser("composite", help="four video files on a 720p grid, encoded to MP4")
    p.add_argument("--inputs", nargs=4, required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(fn=composite)
    p = sub.add_parser("mix", help="an AudioMixer over N inputs of pre-made 48 kHz stereo frames")
    p.add_argument("--inputs", type=int, default=16)
    p.add_argument("--seconds", type=float, default=20.0)
    p.set_defaults(fn=mix)
    args = ap.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main(sys.argv[1:])
