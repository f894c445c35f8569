"""The README's ingress demo: `lkmedia ingress-demo` pushes RTMP into an ingress made through
the real API, shows what a subscriber receives, prints the final IngressInfo without its
stream key and leaves no process behind."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of ``pid``, None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), int(fields[19])


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    except OSError:
        return []


def _descendants(root: int, known: dict[int, tuple[int, list[str]]]) -> None:
    """Adds the live descendants of ``root`` to ``known`` (pid -> start time, argv)."""
    parents = {root, *known}
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in known:
            st = _stat(int(name))
            if st is not None and st[0] in parents:
                known[int(name)] = (st[1], _cmdline(int(name)))


def _closed(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_ingress_demo_pushes_rtmp_through_the_api(tmp_path: Path) -> None:
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    seen: dict[int, tuple[int, list[str]]] = {}
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "lkmedia", "ingress-demo", "--seconds", "4"],
                                stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            _descendants(proc.pid, seen)  # (twice over: the ingress's job processes are grandchildren)
            _descendants(proc.pid, seen)
            time.sleep(0.2)
    finally:
        if proc.poll() is None:  # SIGTERM: the demo tears down what it started
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    stdout, stderr = out_path.read_text(), err_path.read_text()
    assert proc.returncode == 0, f"exit {proc.returncode}\n{stdout[-3000:]}\n{stderr[-3000:]}"
    assert "Traceback" not in stderr and "Warning" not in stdout + stderr, stderr[-2000:]

    # Everything it started is gone: the processes (by pid and start time) and their ports.
    names = {pid: " ".join(argv) for pid, (_, argv) in seen.items()}
    started = " | ".join(names.values())
    for what in ("redis-server", "--dev", "lkmedia ingress", "lkmedia.worker.child", "ffmpeg"):
        assert what in started, f"never saw {what!r} among the demo's processes: {started}"
    left = [names[pid] for pid, (t, _) in seen.items() if (_stat(pid) or (0, -1))[1] == t]
    assert not left, f"still running after the demo: {left}"
    ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", stdout)]
    assert len(ports) >= 4 and all(_closed(p) for p in ports), ports

    # The stream key (read from ffmpeg's command line) is nowhere in what it printed.
    (url,) = {a for argv in (v[1] for v in seen.values()) for a in argv if a.startswith("rtmp://")}
    key = url.rsplit("/", 1)[1]
    assert len(key) >= 8 and key not in stdout + stderr

    # The participant and its tracks, as the hidden subscriber saw them.
    assert re.search(r'participant rtmp-camera \("RTMP camera", INGRESS\)', stdout), stdout
    video = re.search(r"^  video video/H264 1280x720 simulcast: decoded (\d+) frames .*\((.*)\)", stdout, re.M)
    audio = re.search(r"^  audio audio/opus: decoded (\d+) frames, ([\d.]+) s of audio", stdout, re.M)
    assert video and audio, stdout
    sizes = dict(re.findall(r"(\d+x\d+) x(\d+)", video.group(2)))
    # The top layer, at least once: livekit-server may start a new subscriber on a lower one
    # and move it up after its bandwidth probe (the demo reads on, up to the push's length).
    assert "1280x720" in sizes and int(video.group(1)) >= 10, video.group(0)
    assert set(sizes) <= {"1280x720", "640x360", "320x180"}, video.group(0)
    assert float(audio.group(2)) > 0.5, audio.group(0)
    assert "LOW 320x180" in stdout and "MEDIUM 640x360" in stdout and "HIGH 1280x720" in stdout

    # The final IngressInfo, printed as JSON.
    m = re.search(r"^\{\n.*?^\}$", stdout, re.M | re.S)
    assert m, stdout
    info = json.loads(m.group(0))
    st = info["state"]
    assert info["streamKey"] == "REDACTED" and info["inputType"] == "RTMP_INPUT"
    assert st["status"] == "ENDPOINT_INACTIVE" and not st.get("error"), st
    assert st["resourceId"].startswith("RT_")
    assert int(st["endedAt"]) - int(st["startedAt"]) == pytest.approx(4.5e9, abs=2.5e9)
    assert {t.get("type", "AUDIO") for t in st["tracks"]} == {"AUDIO", "VIDEO"}
    assert (st["video"]["width"], st["video"]["height"]) == (1280, 720) and st["video"]["mimeType"] == "video/h264"
    assert st["audio"]["mimeType"] == "audio/aac"
