"""Run every benchmark, print a table, write JSON.

    python3 bench/run.py [--seconds N] [--only NAME[,NAME]] [--json PATH] [--repeat R]

Every figure is a ratio (or a per-item cost) measured in this run, on the same input
and settings as its peer: never an absolute time gate. CPU is user + sys of a child
process (``os.wait4``), the same way for lkmedia and for ffmpeg / gst-launch.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `lkmedia` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import peers
from bench.peers import Measurement

DEFAULT_JSON = peers.ROOT / "bench" / "results" / "latest.json"


@dataclass
class Row:
    """One line of the table. ``status``: pass, fail, info (no goal), skipped: why,
    error: why."""

    name: str
    metric: str
    unit: str
    lkmedia: float | None = None
    peer_name: str | None = None
    peer: float | None = None
    ratio: float | None = None
    goal: str | None = None  # e.g. "<= 1.05" on the ratio (or on lkmedia when no peer)
    status: str = "info"
    note: str = ""

    def judge(self) -> Row:
        if self.goal is None or self.status.startswith(("skipped", "error")):
            return self
        value = self.ratio if self.ratio is not None else self.lkmedia
        if value is None:
            return self
        op, target = self.goal.split()
        ok = value <= float(target) if op == "<=" else value >= float(target)
        self.status = "pass" if ok else "fail"
        return self


@dataclass
class Ctx:
    seconds: float
    repeat: int
    cache: Path
    work: Path
    details: dict[str, Any] = field(default_factory=dict)

    def encode_args(self) -> list[str]:
        return ["--threads", str(peers.X264_THREADS)]

    def measure(self, cmd: list[str], lkmedia: bool = False) -> Measurement:
        """Run ``cmd`` ``repeat`` times; keep the run with the least CPU."""
        best: Measurement | None = None
        for _ in range(self.repeat):
            m = peers.measure(cmd, env=peers.workload_env() if lkmedia else None)
            if not m.ok:
                return m
            if best is None or m.cpu < best.cpu:
                best = m
        assert best is not None
        return best


def _missing(*modules: str) -> str | None:
    for m in modules:
        try:
            if importlib.util.find_spec(m) is None:
                return f"{m} not available"
        except ModuleNotFoundError:
            return f"{m} not available"
    return None


def _fail(m: Measurement, what: str) -> str:
    return f"error: {what} failed: {m.stderr_tail.splitlines()[-1] if m.stderr_tail else m.rc}"


def _m(m: Measurement) -> dict[str, Any]:
    return {"cmd": " ".join(m.cmd), "cpu": round(m.cpu, 3), "user": round(m.user, 3),
            "sys": round(m.sys, 3), "wall": round(m.wall, 3), "rc": m.rc, "report": m.report}


# -- 4. overhead ----------------------------------------------------------------------
def bench_overhead(ctx: Ctx) -> list[Row]:
    k = 20
    items = int(max(2000, 2000 * ctx.seconds))
    base = ctx.measure(peers.workload_cmd("overhead", "--items", str(items), "--chain", "0"), True)
    chain = ctx.measure(peers.workload_cmd("overhead", "--items", str(items), "--chain", str(k)), True)
    row = Row("overhead", f"engine cost per item per edge ({k} pass-through Processors)", "us")
    ctx.details["overhead"] = {"items": items, "chain": k, "k0": _m(base), f"k{k}": _m(chain)}
    for m in (base, chain):
        if not m.ok:
            row.status = _fail(m, "overhead workload")
            return [row]
    per = (chain.report["run_cpu"] - base.report["run_cpu"]) / (items * k) * 1e6
    row.lkmedia = round(per, 3)
    row.goal = "<= 20"
    row.note = (f"(CPU of the graph run with K={k} - K=0) / ({items} items x {k} edges); "
                f"K=0 costs {base.report['run_cpu'] / items * 1e6:.2f} us/item end to end")
    return [row.judge()]


def _probe(path: Path) -> dict[str, Any]:
    """Streams, duration and frame counts of an output (to show both sides made the same)."""
    try:
        from lkmedia.probe import probe
        p = probe(str(path))
    except Exception as e:  # noqa: BLE001 - reported in the results, not fatal
        return {"error": str(e)}
    return {"duration": p.duration, "streams": [
        {"kind": s.kind, "codec": s.codec, "frames": s.frames, "duration": s.duration} for s in p.streams]}


def _cpu_row(name: str, metric: str, lk: Measurement, peer_name: str, peer: Measurement,
             goal: str | None) -> Row:
    row = Row(name, metric, "cpu ratio", peer_name=peer_name, goal=goal)
    if not lk.ok:
        row.status = _fail(lk, "lkmedia workload")
    elif not peer.ok:
        row.status = _fail(peer, peer_name)
    else:
        row.lkmedia, row.peer = round(lk.cpu, 3), round(peer.cpu, 3)
        row.ratio = round(lk.cpu / peer.cpu, 3)
        row.judge()
    return row


# -- 1. transcode ---------------------------------------------------------------------
def bench_transcode(ctx: Ctx) -> list[Row]:
    inp = peers.make_av_input(ctx.cache, ctx.seconds)
    outs = {k: ctx.work / f"transcode_{k}.mp4" for k in ("lkmedia", "ffmpeg", "gst")}
    lk = ctx.measure(peers.workload_cmd("transcode", "--input", str(inp), "--output", str(outs["lkmedia"]),
                                        *ctx.encode_args()), True)
    ff = ctx.measure(peers.ffmpeg_transcode(inp, outs["ffmpeg"]))
    d: dict[str, Any] = {"input": inp.name, "audio": f"re-encoded to AAC {peers.AUDIO_KBPS} kbps on every side",
                         "lkmedia": _m(lk), "ffmpeg": _m(ff)}
    ctx.details["transcode"] = d
    rows = [_cpu_row("transcode/ffmpeg", "CPU of decode + x264 + AAC + MP4, lkmedia / ffmpeg CLI", lk,
                     "ffmpeg", ff, "<= 1.05")]
    if peers.have("gst-launch-1.0"):
        gs = ctx.measure(peers.gst_transcode(inp, outs["gst"]))
        d["gst"] = _m(gs)
        rows.append(_cpu_row("transcode/gst", "CPU of decode + x264 + AAC + MP4, lkmedia / gst-launch", lk,
                             "gst-launch", gs, "<= 0.90"))
    else:
        rows.append(Row("transcode/gst", "", "cpu ratio", status="skipped: gst-launch-1.0 not installed"))
    lk_opts = peers.x264_options(outs["lkmedia"])
    d["outputs"] = {k: {**_probe(p), "x264": peers.x264_core(p)} for k, p in outs.items() if p.exists()}
    d["x264_option_diff_vs_ffmpeg"] = peers.option_diff(lk_opts, peers.x264_options(outs["ffmpeg"]))
    if outs["gst"].exists():
        d["x264_option_diff_vs_gst"] = peers.option_diff(lk_opts, peers.x264_options(outs["gst"]))
    if lk.ok:
        for r, key in zip(rows, ("x264_option_diff_vs_ffmpeg", "x264_option_diff_vs_gst")):
            diff = d.get(key)
            same = ("same x264 settings" if diff == {} else
                    f"x264 settings differ in {', '.join(diff)}" if diff else "x264 settings not compared")
            r.note = (f"{same}; lkmedia start-up (interpreter + imports) {lk.report.get('setup_cpu', 0):.2f} s; "
                      f"wall {lk.wall:.1f} s vs {ff.wall:.1f} s (ffmpeg)")
    return rows


# -- 5. tee ---------------------------------------------------------------------------
def _rtmp_server(ctx: Ctx) -> Any:
    """An nginx-rtmp server, or None (then a FLV file stands in for the RTMP output)."""
    if _missing("lkmedia.sinks.stream", "lkmedia.testing.rtmp_server"):
        return None
    try:
        from lkmedia.testing.rtmp_server import NginxRtmp
        return NginxRtmp(root=ctx.work / "nginx").start()
    except Exception as e:  # noqa: BLE001 - reported in the results, not fatal
        ctx.details.setdefault("tee", {})["rtmp_server_error"] = str(e)
        return None


def bench_tee(ctx: Ctx) -> list[Row]:
    inp = peers.make_av_input(ctx.cache, ctx.seconds)
    server = _rtmp_server(ctx)
    third = "rtmp" if server is not None else "flv"
    d = ctx.details.setdefault("tee", {})
    d["third_output"] = ("StreamSink to a local nginx-rtmp" if server is not None
                         else "FileSink to .flv (no StreamSink or nginx-rtmp here)")
    d["separate"] = "three processes, each decoding the input and encoding once for one output"
    try:
        def cmd(outputs: str, tag: str) -> list[str]:
            out = ctx.work / f"tee_{tag}"
            out.mkdir(exist_ok=True)
            c = peers.workload_cmd("tee", "--input", str(inp), "--outdir", str(out), "--outputs", outputs,
                                   *ctx.encode_args())
            if server is not None:
                c += ["--rtmp-url", server.url(f"bench-{tag}")]
            return c
        one = ctx.measure(cmd(f"mp4,hls,{third}", "one"), True)
        sep = [ctx.measure(cmd(o, o), True) for o in ("mp4", "hls", third)]
        if server is not None:  # what reached the server, per publish
            d["rtmp_recorded_bytes"] = {k: sum(os.path.getsize(f) for f in server.recordings(f"bench-{k}"))
                                        for k in ("one", "rtmp")}
    finally:
        if server is not None:
            server.stop()
    d["one"] = _m(one)
    d["separate_runs"] = [_m(m) for m in sep]
    row = Row("tee", f"CPU of one encode to MP4 + HLS + {third.upper()} / three separate encodes",
              "cpu ratio", peer_name="3 separate", goal="<= 0.40")
    bad = next((m for m in (one, *sep) if not m.ok), None)
    if bad is not None:
        row.status = _fail(bad, "tee workload")
        return [row]
    total = sum(m.cpu for m in sep)
    row.lkmedia, row.peer, row.ratio = round(one.cpu, 3), round(total, 3), round(one.cpu / total, 3)
    run_only = one.report["run_cpu"] / sum(m.report["run_cpu"] for m in sep)
    row.note = f"graph run only (no interpreter start-up): {run_only:.3f}"
    return [row.judge()]


# -- 2. composite ---------------------------------------------------------------------
def bench_composite(ctx: Ctx) -> list[Row]:
    tiles = peers.make_tile_inputs(ctx.cache, ctx.seconds)
    outs = {k: ctx.work / f"composite_{k}.mp4" for k in ("lkmedia", "ffmpeg", "gst")}
    lk = ctx.measure(peers.workload_cmd("composite", "--inputs", *map(str, tiles), "--output",
                                        str(outs["lkmedia"]), *ctx.encode_args()), True)
    ff = ctx.measure(peers.ffmpeg_composite(tiles, outs["ffmpeg"]))
    d: dict[str, Any] = {"inputs": [t.name for t in tiles], "lkmedia": _m(lk), "ffmpeg": _m(ff)}
    ctx.details["composite"] = d
    secs = ctx.seconds
    per = Row("composite", "CPU seconds per output second: 4 x 640x360 H.264 -> 720p30 grid -> x264",
              "cpu s / s", peer_name="ffmpeg xstack")
    if not lk.ok:
        per.status = _fail(lk, "composite workload")
    elif not ff.ok:
        per.status = _fail(ff, "ffmpeg")
    else:
        per.lkmedia, per.peer = round(lk.cpu / secs, 3), round(ff.cpu / secs, 3)
        per.ratio = round(lk.cpu / ff.cpu, 3)
        per.note = (f"lkmedia / peer CPU; no goal. lkmedia start-up (interpreter + imports) "
                    f"{lk.report.get('setup_cpu', 0):.2f} s included")
    rows = [per]
    if peers.have("gst-launch-1.0"):
        gs = ctx.measure(peers.gst_composite(tiles, outs["gst"]))
        d["gst"] = _m(gs)
        if lk.ok and gs.ok:
            rows.append(Row("composite/gst", per.metric, "cpu s / s", round(lk.cpu / secs, 3),
                            "gst compositor", round(gs.cpu / secs, 3), round(lk.cpu / gs.cpu, 3)))
    d["outputs"] = {k: _probe(p) for k, p in outs.items() if p.exists()}
    comp = Row("compositor", "the Compositor's own CPU per output frame", "ms/frame", goal="<= 1")
    if lk.ok:
        r = lk.report
        frames = r.get("compose_calls") or 0
        st = r.get("compositor_stats") or {}
        if frames and r.get("compose_cpu"):
            comp.lkmedia = round(r["compose_cpu"] / frames * 1000, 3)
            comp.note = f"thread CPU inside Compositor.{r['timed_method']}() over {frames} calls"
            comp.judge()
        elif "ms_per_frame" in st:
            comp.lkmedia = round(float(st["ms_per_frame"]), 3)
            comp.note = "from Compositor.stats()"
            comp.judge()
        else:
            comp.status = "skipped: no per-frame method to time and no ms_per_frame in stats()"
    else:
        comp.status = per.status
    rows.append(comp)
    return rows


# -- 3. mix ---------------------------------------------------------------------------
def bench_mix(ctx: Ctx) -> list[Row]:
    n = 16
    m = ctx.measure(peers.workload_cmd("mix", "--inputs", str(n), "--seconds", f"{ctx.seconds:g}"), True)
    ctx.details["mix"] = _m(m)
    row = Row("mix", f"AudioMixer, {n} inputs of 48 kHz stereo: media seconds / CPU seconds", "x realtime",
              goal=">= 300")
    if not m.ok:
        row.status = _fail(m, "mix workload")
        return [row]
    r = m.report
    # The goal is about the mix itself: the mixer node's CPU (its loop and its worker
    # thread), timed per node in the same run. The whole graph is reported beside it.
    row.metric = f"AudioMixer, {n} inputs of 48 kHz stereo: media seconds / mixer CPU seconds"
    row.lkmedia = round(r["media_seconds"] / r["mixer_cpu"], 1)
    row.note = f"mixer CPU {r['mixer_cpu'] * 1000:.0f} ms for {r['media_seconds']:g} s"
    want = round(r["media_seconds"] * 100)  # 10 ms windows
    if abs(r["out_frames"] - want) > 2:
        row.note += f"; output has {r['out_frames']} frames, expected {want}"
        row.status = "fail: wrong output length"
        return [row]
    whole = Row("mix/graph", f"{n} replaying sources + mixer + sink: media seconds / CPU seconds",
                "x realtime", lkmedia=round(r["media_seconds"] / r["run_cpu"], 1), status="info",
                note=f"sources {r['sources_cpu'] * 1000:.0f} ms, sink {r['sink_cpu'] * 1000:.0f} ms")
    return [row.judge(), whole]


# -- 6. egress (bench/egress.py) ------------------------------------------------------
def bench_egress(ctx: Ctx) -> list[Row]:
    from bench.egress import bench_egress as run_egress

    return run_egress(ctx, Row)


# -- 7. rejoin (bench/rejoin.py) ----------------------------------------------------
def bench_rejoin(ctx: Ctx) -> list[Row]:
    from bench.rejoin import bench_rejoin as run_rejoin

    return run_rejoin(ctx, Row)


# -- 8. room composite (bench/room_composite.py) --------------------------------------
def bench_room_composite(ctx: Ctx) -> list[Row]:
    from bench.room_composite import bench_room_composite as run_room_composite

    return run_room_composite(ctx, Row)


# -- 9. Chrome engine (bench/chrome.py) --------------------------------------------------
def bench_chrome(ctx: Ctx) -> list[Row]:
    from bench.chrome import bench_chrome as run_chrome

    return run_chrome(ctx, Row)


# -- 10. Publishing into a room: ingress's output (bench/room_publish.py) ----------------
def bench_room_publish(ctx: Ctx) -> list[Row]:
    from bench.room_publish import bench_room_publish as run_room_publish

    return run_room_publish(ctx, Row)


# -- 11. RTMP into a room through the ingress service (bench/ingress.py) ------------------
def bench_ingress(ctx: Ctx) -> list[Row]:
    from bench.ingress import bench_ingress as run_ingress

    return run_ingress(ctx, Row)


# -- 12. Audio track egresses by the dozen through the service (bench/tracks.py) ---------
def bench_tracks(ctx: Ctx) -> list[Row]:
    from bench.tracks import bench_tracks as run_tracks

    return run_tracks(ctx, Row)


#: name -> (benchmark, lkmedia modules it needs; missing ones make it "skipped").
BENCHMARKS: dict[str, tuple[Callable[[Ctx], list[Row]], tuple[str, ...]]] = {
    "transcode": (bench_transcode, ("lkmedia.sources.file", "lkmedia.sinks.file")),
    "composite": (bench_composite, ("lkmedia.sources.file", "lkmedia.sinks.file", "lkmedia.nodes.compose")),
    "mix": (bench_mix, ("lkmedia.nodes.audio_mix",)),
    "overhead": (bench_overhead, ("lkmedia.core",)),
    "tee": (bench_tee, ("lkmedia.sources.file", "lkmedia.sinks.file", "lkmedia.sinks.segments")),
    "egress": (bench_egress, ("lkmedia.service.egress", "lkmedia.dev.stack", "livekit.api")),
    "rejoin": (bench_rejoin, ("lkmedia.sources.livekit", "lkmedia.dev.publisher")),
    "room-composite": (bench_room_composite, ("lkmedia.service.egress", "lkmedia.dev.lk")),
    "chrome": (bench_chrome, ("lkmedia.service.egress", "lkmedia.dev.lk", "lkmedia.chrome.session", "playwright")),
    "room-publish": (bench_room_publish, ("lkmedia.sinks.room", "lkmedia.dev.stack")),
    "ingress": (bench_ingress, ("lkmedia.service.ingress_node", "lkmedia.dev.stack")),
    "tracks": (bench_tracks, ("lkmedia.service.egress", "lkmedia.dev.lk", "lkmedia.testing.whip")),
}


def run_benchmarks(names: list[str], ctx: Ctx,
                   requires: dict[str, tuple[str, ...]] | None = None) -> list[Row]:
    """Run ``names`` in order. A benchmark whose modules are missing, or that breaks,
    becomes a row saying so; the others still run."""
    rows: list[Row] = []
    for n in names:
        fn, needs = BENCHMARKS[n]
        why = _missing(*(requires or {}).get(n, needs))
        if why:
            rows.append(Row(n, "", "", status=f"skipped: {why}"))
            continue
        print(f"[bench] {n} ...", file=sys.stderr, flush=True)
        try:
            rows += fn(ctx)
        except Exception as e:  # noqa: BLE001 - one broken benchmark must not hide the others
            rows.append(Row(n, "", "", status=f"error: {type(e).__name__}: {e}"))
    return rows


# -- report ---------------------------------------------------------------------------
def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def table(rows: list[Row]) -> str:
    head = ("benchmark", "unit", "lkmedia", "peer", "peer value", "ratio", "goal", "status")
    lines = [(r.name, r.unit, _fmt(r.lkmedia), r.peer_name or "-", _fmt(r.peer), _fmt(r.ratio),
              r.goal or "-", r.status) for r in rows]
    widths = [max(len(str(x[i])) for x in [head, *lines]) for i in range(len(head))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(head, widths))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in lines]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="media seconds per input (default 20)")
    ap.add_argument("--only", default=None, help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    ap.add_argument("--repeat", type=int, default=1, help="runs per command; the least CPU is kept")
    ap.add_argument("--cache", type=Path, default=peers.ROOT / "bench" / "results" / "inputs",
                    help="where generated inputs are kept between runs")
    args = ap.parse_args(argv)
    if args.seconds <= 0 or args.repeat < 1:
        ap.error("--seconds must be positive and --repeat at least 1")
    names = list(BENCHMARKS) if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    args.cache.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lkmedia-bench-") as work:
        ctx = Ctx(args.seconds, args.repeat, args.cache, Path(work))
        rows = run_benchmarks(names, ctx)
    result = {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "seconds": args.seconds,
        "repeat": args.repeat,
        "wall_seconds": round(time.monotonic() - t0, 1),
        "host": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                 "loadavg_before": [round(x, 2) for x in load_before],
                 "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "versions": peers.versions(),
        "settings": {"fps": peers.FPS, "gop": peers.GOP, "video_kbps": peers.VIDEO_KBPS,
                     "audio_kbps": peers.AUDIO_KBPS, "x264_preset": peers.X264_PRESET,
                     "x264_threads": peers.X264_THREADS, "bframes": peers.BFRAMES,
                     "x264_threading": "frame threads on every side (VideoEncoder's default)",
                     "mp4": "regular faststart MP4 on every side (lkmedia FileSink: fragmented, then remuxed)"},
        "results": [asdict(r) for r in rows],
        "details": ctx.details,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str))
    print(table(rows))
    for r in rows:
        if r.note:
            print(f"  {r.name}: {r.note}")
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
