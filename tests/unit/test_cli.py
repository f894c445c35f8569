"""The ``lkmedia`` command run as users run it: a subprocess, judged by exit code,
stderr and the probed media it writes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lkmedia.core import Sink
from lkmedia.probe import decode_errors, playable_seconds, probe

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "configs" / "examples"


def lkmedia(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "lkmedia", *args], check=False, capture_output=True,
                          text=True, timeout=timeout, cwd=cwd or ROOT, env=env)


def assert_one_error_line(r: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("lkmedia: error:")]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def assert_av(path: Path, seconds: float, width: int, height: int) -> None:
    p = probe(str(path))
    v, a = p.stream("video"), p.stream("audio")
    assert (v.codec, v.width, v.height, a.codec) == ("h264", width, height, "aac")
    assert p.duration is not None and abs(p.duration - seconds) < 0.2, p.duration
    assert decode_errors(str(path)) == ""


def test_demo_writes_a_probed_mp4_and_hls(tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = lkmedia("demo", "--out", str(out), "--seconds", "2", "--size", "320x240")
    assert r.returncode == 0, r.stderr
    assert_av(out / "demo.mp4", 2.0, 320, 240)
    assert probe(str(out / "demo.mp4")).stream("video").frames == 60
    playlist = out / "hls" / "playlist.m3u8"
    assert_av(playlist, 2.0, 320, 240)
    text = playlist.read_text()
    assert "#EXT-X-ENDLIST" in text and text.count("#EXTINF") == 1
    # It says where the files are, with their probed durations.
    assert f"{out / 'demo.mp4'}  duration 2.0" in r.stdout
    assert f"{playlist}  duration 2.0" in r.stdout
    assert r.stderr == ""


def test_run_example_graphs(tmp_path: Path) -> None:
    r = lkmedia("run", str(EXAMPLES / "demo.yaml"), "--out", str(tmp_path), "--var", "SECONDS=2", "--json-log")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["exit_code"] == 0 and summary["errors"] == []
    assert {s["sink"]: s["status"] for s in summary["sinks"]} == {"mp4": "ok", "hls": "ok"}
    assert_av(tmp_path / "demo.mp4", 2.0, 1280, 720)
    assert_av(tmp_path / "hls" / "live.m3u8", 2.0, 1280, 720)

    r = lkmedia("run", str(EXAMPLES / "composite.yaml"), "--out", str(tmp_path), "--var", "SECONDS=2")
    assert r.returncode == 0, r.stderr
    assert "composite.mp4" in r.stdout and "ok" in r.stdout
    assert_av(tmp_path / "composite.mp4", 2.0, 1280, 720)

    r = lkmedia("run", str(EXAMPLES / "transcode.yaml"), "--out", str(tmp_path),
                "--var", f"INPUT={tmp_path / 'composite.mp4'}", "--var", "OUTPUT=small.mp4")
    assert r.returncode == 0, r.stderr
    assert_av(tmp_path / "small.mp4", 2.0, 640, 360)


GRAPH = """nodes:
  src: {type: synthetic, width: 320, height: 240, duration: 2}
  venc: {type: video_encoder, width: 320, height: 240, bitrate: 300000}
  aenc: {type: audio_encoder}
  mp4: {type: file, path: %s}
links:
  - [src.video, venc, mp4]
  - [src.audio, aenc, mp4]
"""


@pytest.mark.parametrize("name, text, needles", [
    ("bad-yaml", "nodes:\n  src: {type: synthetic\nlinks: []\n", ["invalid YAML", "line 3"]),
    ("unknown-type", GRAPH.replace("type: synthetic", "type: synth") % "x.mp4",
     ["node 'src'", "unknown node type 'synth'", "known types:"]),
    ("unknown-arg", GRAPH.replace("duration: 2", "duraton: 2") % "x.mp4",
     ["node 'src' (synthetic)", "unknown argument 'duraton'"]),
    ("unreadable-input", ("nodes: {in: {type: file_source, url: nothere.mkv}, "
     "mp4: {type: file, path: x.mp4}}\nlinks: [[in.video, mp4]]\n"), ["node 'in'", "nothere.mkv", "No such file"]),
    ("under-a-file", GRAPH % "g.yaml/x.mp4", ["node 'mp4'", "cannot write", "is a file"]),
    ("proc", GRAPH % "/proc/x.mp4", ["node 'mp4'", "cannot write '/proc/x.mp4'"]),
    ("traversal", GRAPH % "../../x.mp4", ["node 'mp4'", "'../../x.mp4'", ".."]),
    ("raw-into-mp4", ("nodes: {src: {type: synthetic, audio: false}, mp4: {type: file, path: x.mp4}}\n"
     "links: [[src.video, mp4]]\n"), ["src.video", "mp4", "encoded packets", "encoder"]),
    ("opus-into-mp4-hls", GRAPH.replace("{type: audio_encoder}", "{type: audio_encoder, codec: opus}")
     .replace("mp4: {type: file, path: %s}", "mp4: {type: hls, directory: h}"), ["HLS", "opus"]),
])
def test_bad_input_exits_2_with_one_clear_line(tmp_path: Path, name: str, text: str, needles: list[str]) -> None:
    (tmp_path / "g.yaml").write_text(text)
    r = lkmedia("run", str(tmp_path / "g.yaml"))
    assert_one_error_line(r, 2, *needles)
    assert r.stdout == ""
    assert not list(tmp_path.parent.glob("x.mp4")) and not (tmp_path / "x.mp4").exists()


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    assert_one_error_line(lkmedia("run", str(tmp_path / "none.yaml")), 2, "cannot read graph file", "none.yaml")
    assert_one_error_line(lkmedia("run"), 2, "required: graph")
    assert_one_error_line(lkmedia("nosuch"), 2, "invalid choice")
    (tmp_path / "g.yaml").write_text(GRAPH % "x.mp4")
    assert_one_error_line(lkmedia("run", str(tmp_path / "g.yaml"), "--var", "novalue"), 2, "NAME=VALUE")
    assert_one_error_line(lkmedia("run", str(tmp_path / "g.yaml"), "--stop-after", "0"), 2, "--stop-after")
    assert_one_error_line(lkmedia("demo", "--size", "big"), 2, "--size")
    r = lkmedia("run", str(tmp_path / "g.yaml"), "--stop-after", "x", "--debug")
    assert r.returncode == 2 and "invalid float value" in r.stderr


class FailingSink(Sink):
    """A destination that refuses its third item: a runtime failure on one branch."""

    async def run(self) -> None:
        port = next(iter(self.inputs.values()))
        for _ in range(3):
            await port.get()
        raise OSError("destination refused the stream")


def test_runtime_failure_exits_1_and_the_other_output_still_finalises(tmp_path: Path) -> None:
    text = (GRAPH % "ok.mp4") + "  - [venc, bad]\n"
    text = text.replace("links:", "  bad: {type: 'tests.unit.test_cli:FailingSink'}\nlinks:")
    (tmp_path / "g.yaml").write_text(text)
    r = lkmedia("run", str(tmp_path / "g.yaml"))
    assert_one_error_line(r, 1, "bad", "destination refused the stream")
    assert "bad:" in r.stdout and "failed" in r.stdout
    assert_av(tmp_path / "ok.mp4", 2.0, 320, 240)
    r = lkmedia("run", str(tmp_path / "g.yaml"), "--debug")
    assert r.returncode == 1  # --debug may show the traceback; the code is the same


LIVE = """nodes:
  src: {type: synthetic, width: 320, height: 240, live: true}
  venc: {type: video_encoder, width: 320, height: 240, bitrate: 300000, keyframe_interval: 1}
  aenc: {type: audio_encoder}
  mp4: {type: file, path: live.mp4}
links:
  - {chain: [src.video, venc], policy: drop-oldest, capacity: 4}
  - [venc, mp4]
  - [src.audio, aenc, mp4]
"""


def start_live(tmp_path: Path, *extra: str) -> subprocess.Popen[str]:
    (tmp_path / "live.yaml").write_text(LIVE)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "lkmedia", "run", str(tmp_path / "live.yaml"), *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    # Wait until media is on disk, so the signal lands in a running graph.
    path, deadline = tmp_path / "live.mp4", time.monotonic() + 20
    while not (path.exists() and path.stat().st_size > 2000):
        assert time.monotonic() < deadline and p.poll() is None, "no media written"
        time.sleep(0.1)
    time.sleep(1.0)
    return p


def test_sigint_stops_gracefully_with_a_finalised_mp4(tmp_path: Path) -> None:
    p = start_live(tmp_path, "--json-log")
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert time.monotonic() - t0 < 10
    assert "Traceback" not in err
    summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    assert summary["interrupted"] == "stopped" and summary["errors"] == []
    path = tmp_path / "live.mp4"
    pr = probe(str(path))
    assert pr.stream("video").codec == "h264" and pr.stream("audio").codec == "aac"
    assert pr.duration is not None and pr.duration > 1.0
    assert abs(summary["sinks"][0]["duration"] - pr.duration) < 0.2
    assert decode_errors(str(path)) == ""
    # Finalised: a regular MP4 with its index before the media (faststart), no fragments.
    data = path.read_bytes()
    assert 0 < data.find(b"moov") < data.find(b"mdat") and b"moof" not in data


def test_second_signal_cancels_and_the_mp4_stays_playable(tmp_path: Path) -> None:
    p = start_live(tmp_path)
    p.send_signal(signal.SIGTERM)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert "cancelled" in out and "Traceback" not in err
    assert playable_seconds(str(tmp_path / "live.mp4")) > 0.5


def test_stop_after(tmp_path: Path) -> None:
    (tmp_path / "live.yaml").write_text(LIVE)
    t0 = time.monotonic()
    r = lkmedia("run", str(tmp_path / "live.yaml"), "--stop-after", "1.5", "--log-level", "info", "--json-log")
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 15
    logs = [json.loads(ln) for ln in r.stderr.splitlines()]
    assert any(rec["msg"].startswith("stopping: --stop-after") and rec["level"] == "info" for rec in logs)
    pr = probe(str(tmp_path / "live.mp4"))
    assert pr.duration is not None and 1.2 < pr.duration < 2.2
