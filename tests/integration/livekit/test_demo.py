"""The README's first command: the LiveKit main job records through the real API."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lkmedia.probe import probe


def test_egress_demo_records_a_participant_through_the_api(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "lkmedia", "egress-demo", "--out", str(tmp_path), "--seconds", "3"],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert '"status": "EGRESS_COMPLETE"' in out.stdout and "Traceback" not in out.stderr
    # Was: PyJWT's InsecureKeyLengthWarning, with a source line, on every API call (a 6-byte dev key).
    assert "Warning" not in out.stdout + out.stderr and "HMAC" not in out.stderr, out.stderr[-2000:]
    (mp4,) = tmp_path.glob("EG_*/lkmedia-demo-*.mp4")
    p = probe(str(mp4))
    assert p.stream("video").codec == "h264" and p.stream("video").width == 1280 and p.has("audio")
    assert p.duration == pytest.approx(3.0, abs=0.8)
