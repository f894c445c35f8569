"""Measuring child processes, making the inputs, and the peer command lines.

lkmedia workloads and their ffmpeg / gst-launch peers run the same way: as a child
process whose CPU time (user + sys, from ``os.wait4``) is the figure. Inputs are made
once per run (and cached by their parameters) with the ffmpeg CLI.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULT_TAG = "BENCH_RESULT "

# -- shared encode settings (every side uses the same ones) -----------------
FPS = 30
GOP = 120  # frames: LiveKit's 4 s keyframe interval at 30 fps
VIDEO_KBPS = 3000
AUDIO_KBPS = 128
X264_PRESET = "veryfast"
X264_THREADS = 2  # explicit on every side: "auto" differs between builds
BFRAMES = 2


@dataclass
class Measurement:
    """One child process: CPU seconds (user + sys), wall seconds, exit code, and the
    JSON a workload printed on its ``BENCH_RESULT`` line (empty for peers)."""

    cmd: list[str]
    cpu: float
    user: float
    sys: float
    wall: float
    rc: int
    stderr_tail: str = ""
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.rc == 0


def measure(cmd: list[str], timeout: float = 900.0, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> Measurement:
    """Run ``cmd`` and return its own rusage (and that of children it waited for)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd or ROOT, start_new_session=True)
        timer = threading.Timer(timeout, lambda: _kill_group(proc.pid))
        timer.start()
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
    report: dict[str, Any] = {}
    for line in stdout.splitlines():
        if line.startswith(RESULT_TAG):
            report = json.loads(line[len(RESULT_TAG):])
    tail = "\n".join(stderr.strip().splitlines()[-6:])
    if proc.returncode != 0 and not tail:
        tail = f"exit code {proc.returncode}"
    return Measurement(cmd, ru.ru_utime + ru.ru_stime, ru.ru_utime, ru.ru_stime, wall,
                       proc.returncode, tail, report)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def workload_cmd(name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "bench.workloads", name, *args]


def workload_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# -- inputs -------------------------------------------------------------------
def _ffmpeg(args: list[str], out: Path) -> Path:
    if out.exists() and out.stat().st_size > 0:
        return out
    tmp = out.with_name(out.stem + ".part" + out.suffix)
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args, str(tmp)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"making {out.name} failed: {r.stderr.strip()[-400:]}")
    tmp.rename(out)
    return out


def make_av_input(cache: Path, seconds: float, width: int = 1280, height: int = 720) -> Path:
    """H.264 (high, yuv420p, 4 Mbps, 2 s GOP) + AAC stereo 48 kHz in MP4."""
    out = cache / f"av_{width}x{height}_{FPS}_{seconds:g}s.mp4"
    return _ffmpeg([
        "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={FPS}",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
        "-t", f"{seconds:g}", "-map", "0:v", "-map", "1:a",
        "-c:v", "libx264", "-preset", "veryfast", "-b:v", "4M", "-g", str(2 * FPS),
        "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k", "-ac", "2", "-ar", "48000",
    ], out)


COMPOSITE_PATTERNS = ("testsrc2", "smptehdbars", "testsrc", "rgbtestsrc")


def make_tile_inputs(cache: Path, seconds: float, width: int = 640, height: int = 360) -> list[Path]:
    """Four different video-only H.264 files for the compositor."""
    paths = []
    for i, pat in enumerate(COMPOSITE_PATTERNS):
        out = cache / f"tile{i}_{pat}_{width}x{height}_{seconds:g}s.mp4"
        paths.append(_ffmpeg([
            "-f", "lavfi", "-i", f"{pat}=size={width}x{height}:rate={FPS}", "-t", f"{seconds:g}",
            "-c:v", "libx264", "-preset", "veryfast", "-b:v", "1M", "-g", str(2 * FPS),
            "-pix_fmt", "yuv420p",
        ], out))
    return paths


# -- peers ----------------------------------------------------------------------
def ffmpeg_x264_args() -> list[str]:
    return ["-c:v", "libx264", "-preset", X264_PRESET, "-b:v", f"{VIDEO_KBPS}k",
            "-maxrate", f"{VIDEO_KBPS}k", "-bufsize", f"{2 * VIDEO_KBPS}k", "-g", str(GOP),
            "-keyint_min", str(GOP), "-sc_threshold", "0", "-bf", str(BFRAMES),
            "-threads:v", str(X264_THREADS), "-pix_fmt", "yuv420p"]


#: lkmedia's FileSink ends an MP4 as a regular faststart file, so the peers do too.
FFMPEG_MOVFLAGS = "+faststart"


def ffmpeg_transcode(inp: Path, out: Path) -> list[str]:
    return ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(inp),
            "-map", "0:v", "-map", "0:a", *ffmpeg_x264_args(),
            "-c:a", "aac", "-b:a", f"{AUDIO_KBPS}k", "-movflags", FFMPEG_MOVFLAGS, str(out)]


def gst_x264() -> str:
    # pass=cbr (the default) sets vbv-maxrate = bitrate; buffer = 2 s as on the other sides.
    return (f"x264enc speed-preset={X264_PRESET} bitrate={VIDEO_KBPS} key-int-max={GOP} "
            f"bframes={BFRAMES} threads={X264_THREADS} vbv-buf-capacity=2000 "
            f"option-string=keyint-min={GOP}:scenecut=0")


def gst_transcode(inp: Path, out: Path) -> list[str]:
    pipeline = (
        f"filesrc location={inp} ! qtdemux name=d "
        f"d.video_0 ! queue ! h264parse ! avdec_h264 ! {gst_x264()} ! h264parse ! queue ! mp4mux name=m faststart=true "
        f"! filesink location={out} "
        f"d.audio_0 ! queue ! aacparse ! avdec_aac ! audioconvert ! audioresample "
        f"! avenc_aac bitrate={AUDIO_KBPS * 1000} ! aacparse ! queue ! m."
    )
    return ["gst-launch-1.0", "-q", *pipeline.split()]


def ffmpeg_composite(inputs: list[Path], out: Path) -> list[str]:
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    for p in inputs:
        cmd += ["-i", str(p)]
    stack = "".join(f"[{i}:v]" for i in range(len(inputs)))
    cmd += ["-filter_complex", f"{stack}xstack=inputs=4:layout=0_0|w0_0|0_h0|w0_h0[v]",
            "-map", "[v]", *ffmpeg_x264_args(), "-movflags", FFMPEG_MOVFLAGS, str(out)]
    return cmd


def gst_composite(inputs: list[Path], out: Path, tile: tuple[int, int] = (640, 360)) -> list[str]:
    w, h = tile
    pads = " ".join(f"sink_{i}::xpos={(i % 2) * w} sink_{i}::ypos={(i // 2) * h}" for i in range(4))
    parts = [(f"compositor name=c {pads} ! video/x-raw,width={2 * w},height={2 * h} ! "
              f"{gst_x264()} ! h264parse ! mp4mux faststart=true ! filesink location={out}")]
    for i, p in enumerate(inputs):
        parts.append(f"filesrc location={p} ! qtdemux ! h264parse ! avdec_h264 ! queue ! c.sink_{i}")
    return ["gst-launch-1.0", "-q", *" ".join(parts).split()]


# -- versions -------------------------------------------------------------------
def _first_line(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (r.stdout or r.stderr).strip().splitlines()
    return lines[0] if lines else None


def x264_core(path: Path) -> str | None:
    """The x264 build that wrote ``path`` (from its SEI user-data string)."""
    try:
        data = path.read_bytes()[: 4 << 20]
    except OSError:
        return None
    m = re.search(rb"x264 - core (\d+)( r\d+ [0-9a-f]+)?", data)
    return m.group(0).decode() if m else None


def x264_options(path: Path) -> dict[str, str]:
    """The encoder settings x264 wrote into ``path`` (to check that both sides match)."""
    try:
        data = path.read_bytes()[: 4 << 20]
    except OSError:
        return {}
    m = re.search(rb"x264 - core [^\x00]*? options: ([^\x00]+)", data)
    if not m:
        return {}
    opts = m.group(1).decode("ascii", "replace").split()
    return dict(o.split("=", 1) for o in opts if "=" in o)


def option_diff(a: dict[str, str], b: dict[str, str]) -> dict[str, list[str | None]]:
    return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def versions() -> dict[str, Any]:
    v: dict[str, Any] = {
        "python": sys.version.split()[0],
        "ffmpeg_cli": _first_line(["ffmpeg", "-version"]),
        "gst_launch": _first_line(["gst-launch-1.0", "--version"]),
        "cpu_count": os.cpu_count(),
    }
    try:
        import av
        v["pyav"] = av.__version__
        v["pyav_ffmpeg"] = {k: ".".join(map(str, t)) for k, t in av.library_versions.items()}
    except ImportError:
        v["pyav"] = None
    return v


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


# -- the live remux peer (track egress) --------------------------------------------
SRTP_SUITE = "AES_CM_128_HMAC_SHA1_80"  # WebRTC's default SRTP profile
RTP_CODECS = {"vp8": ("video", 96, "VP8/90000"), "opus": ("audio", 111, "opus/48000/2")}


def live_remux(inp: Path, codec: str, out: Path, seconds: float, warmup: float = 3.0) -> float | None:
    """CPU seconds per media second of the ffmpeg CLI receiving one ``codec`` stream of
    ``inp`` live and writing it as it arrived (``-c copy``) into ``out``: what a track
    egress does, less ICE and DTLS. A second ffmpeg sends it in real time (``-re``, looped)
    as SRTP (WebRTC's default suite) to loopback UDP; only the receiver is measured, over
    ``seconds`` after ``warmup`` s (its start-up and probing left out, as lkmedia's steady
    window leaves out the job's). None if it received nothing."""
    import base64
    import socket

    from bench.sampling import TreeSampler
    from lkmedia.dev.stack import free_port

    media, pt, rtpmap = RTP_CODECS[codec]
    port = free_port(socket.SOCK_DGRAM)
    key = base64.b64encode(os.urandom(30)).decode()
    sdp = out.with_suffix(".sdp")
    sdp.write_text(f"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=peer\nc=IN IP4 127.0.0.1\nt=0 0\n"
                   f"m={media} {port} RTP/SAVP {pt}\na=rtpmap:{pt} {rtpmap}\n"
                   f"a=crypto:1 {SRTP_SUITE} inline:{key}\n")
    quiet = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    receiver = subprocess.Popen(
        [*quiet, "-protocol_whitelist", "file,udp,rtp,srtp,crypto", "-i", str(sdp), "-map", "0", "-c", "copy",
         "-t", f"{warmup + seconds + 2:g}", str(out)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(0.5)  # (bound before the first packet: VP8 starts at its key frame)
    sender = subprocess.Popen(
        [*quiet, "-re", "-stream_loop", "-1", "-i", str(inp), "-map", f"0:{media[0]}", "-c", "copy",
         "-f", "rtp", "-payload_type", str(pt), "-srtp_out_suite", SRTP_SUITE, "-srtp_out_params", key,
         f"srtp://127.0.0.1:{port}?pkt_size=1200"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        time.sleep(warmup)
        sampler = TreeSampler(receiver.pid)
        time.sleep(seconds)
        cpu = sampler.stop()
        with contextlib.suppress(subprocess.TimeoutExpired):
            receiver.wait(20)  # (it ends its file itself, at -t)
    finally:
        for p in (sender, receiver):
            if p.poll() is None:
                _kill_group(p.pid)
            p.wait()
    return cpu / seconds if out.exists() and out.stat().st_size > 0 else None
