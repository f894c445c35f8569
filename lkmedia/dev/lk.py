"""The ``lk`` CLI (livekit-cli) against a dev stack: ``lk perf load-test`` publishers, and
any ``lk`` command with the stack's URL and keys (by environment, never on a command line)."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .stack import DevStack, find_binary


class LkLoadTest:
    """``lk perf load-test`` publishing into a room: an independent client (Go SDK, its own
    pre-encoded media) for interop tests. Identities are ``<identity_prefix>_pub_<n>``-like.

    Runs as a child process (logs in ``log_path``); ``stop()`` sends SIGINT, then SIGKILL.
    """

    def __init__(
        self,
        stack: DevStack,
        room: str,
        *,
        video_publishers: int = 1,
        audio_publishers: int = 1,
        identity_prefix: str = "lk",
        video_codec: str | None = "vp8",
        video_resolution: str = "low",
        simulcast: bool = False,
        duration: float | None = None,
        extra_args: Sequence[str] = (),
        log_path: str | Path | None = None,
    ) -> None:
        self.stack = stack
        self.room = room
        self.argv = [
            find_binary("lk"), "perf", "load-test", "--room", room,
            "--video-publishers", str(video_publishers), "--audio-publishers", str(audio_publishers),
            "--subscribers", "0", "--identity-prefix", identity_prefix, "--video-resolution", video_resolution,
        ]
        if video_codec:
            self.argv += ["--video-codec", video_codec]
        if not simulcast:
            self.argv.append("--no-simulcast")
        if duration is not None:
            self.argv += ["--duration", f"{duration:g}s"]
        self.argv += list(extra_args)
        self.log_path = Path(log_path) if log_path else stack.workdir / f"lk-load-test-{room}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LkLoadTest:
        # Keys by environment, so that the secret is not on a command line.
        with open(self.log_path, "wb") as logf:
            self.proc = subprocess.Popen(self.argv, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=_lk_env(self.stack), start_new_session=True)
        return self

    def tail(self, n: int = 15) -> str:
        """The end of its log (what to show when its participants do not come)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> int | None:
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.proc = None
        return p.returncode

    def __enter__(self) -> LkLoadTest:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def run_lk(stack: DevStack, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run ``lk <args>`` against the stack (url and keys from the stack, keys by env)."""
    return subprocess.run([find_binary("lk"), *args], capture_output=True, text=True, env=_lk_env(stack),
                          timeout=timeout)


def _lk_env(stack: DevStack) -> dict[str, str]:
    # By environment, so that the secret is not on a command line.
    return {**os.environ, "LIVEKIT_URL": stack.url, "LIVEKIT_API_KEY": stack.api_key,
            "LIVEKIT_API_SECRET": stack.api_secret}


class LkJoin:
    """``lk room join --publish FILE...``: a participant publishing pre-encoded files (H.264
    with one slice per frame, ``.ivf`` VP8, VP9 or AV1, ``.ogg`` Opus), an independent client. It
    unpublishes each track when its file ends, and stays in the room until stopped."""

    def __init__(self, stack: DevStack, room: str, identity: str, files: Sequence[str | Path], *,
                 fps: int = 30, log_path: str | Path | None = None) -> None:
        self.stack, self.room, self.identity = stack, room, identity
        self.argv = [find_binary("lk"), "room", "join", "--identity", identity]
        for f in files:
            self.argv += ["--publish", str(f)]
        self.argv += ["--fps", str(fps), room]
        self.log_path = Path(log_path) if log_path else stack.workdir / f"lk-join-{room}-{identity}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LkJoin:
        with open(self.log_path, "wb") as logf:
            self.proc = subprocess.Popen(self.argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=_lk_env(self.stack), start_new_session=True)
        return self

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()

    def __enter__(self) -> LkJoin:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def h264_clip(path: str | Path, seconds: float, *, width: int = 640, height: int = 360, fps: int = 30,
              color: str | None = None, bitrate: str = "1M") -> Path:
    """An Annex B H.264 clip ``lk room join --publish`` sends cleanly: one slice per frame
    (x264 with one thread; several slices arrived broken at every receiver), a key frame
    every second, baseline profile. ``color``: a solid colour (ffmpeg's name or 0xRRGGBB)
    instead of the test pattern."""
    src = f"color=c={color}:size={width}x{height}:rate={fps}" if color else f"testsrc=size={width}x{height}:rate={fps}"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", src, "-t", f"{seconds:g}",
                    "-c:v", "libx264", "-threads", "1", "-g", str(fps), "-profile:v", "baseline", "-pix_fmt", "yuv420p",
                    "-b:v", bitrate, "-bsf:v", "h264_mp4toannexb", str(path)], check=True)
    return Path(path)


def vp9_clip(path: str | Path, seconds: float, *, width: int = 640, height: int = 360, fps: int = 30,
             bitrate: str = "1M") -> Path:
    """An IVF VP9 clip for ``lk room join --publish``: libvpx in real-time mode, a key frame
    every second, no hidden frames (each IVF frame one picture, as WebRTC sends VP9)."""
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size={width}x{height}:rate={fps}",
                    "-t", f"{seconds:g}", "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8",
                    "-lag-in-frames", "0", "-auto-alt-ref", "0", "-g", str(fps), "-b:v", bitrate, "-pix_fmt", "yuv420p",
                    "-f", "ivf", str(path)], check=True)
    return Path(path)


def av1_clip(path: str | Path, seconds: float, *, width: int = 640, height: int = 360, fps: int = 30,
             bitrate: str = "1M") -> Path:
    """An IVF AV1 clip for ``lk room join --publish``: SVT-AV1's fastest preset, low delay
    (no hidden frames), a key frame every second."""
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size={width}x{height}:rate={fps}",
                    "-t", f"{seconds:g}", "-c:v", "libsvtav1", "-preset", "12", "-g", str(fps),
                    "-svtav1-params", "pred-struct=1", "-b:v", bitrate, "-pix_fmt", "yuv420p", "-f", "ivf", str(path)],
                   check=True)
    return Path(path)


def ivf_frames(path: str | Path) -> list[bytes]:
    """The frames of an IVF file, in order."""
    data = Path(path).read_bytes()
    pos, out = int.from_bytes(data[6:8], "little"), []  # (the header's own length)
    while pos + 12 <= len(data):
        size = int.from_bytes(data[pos:pos + 4], "little")
        out.append(data[pos + 12:pos + 12 + size])
        pos += 12 + size
    return out
