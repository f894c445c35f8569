"""The benchmark harness runs end to end and writes the JSON it promises.

No timing assertions: figures depend on the machine and its load. What can fail here
is the harness itself (a crash, a missing field, a wrong row shape, bad arguments).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROW_FIELDS = {"name", "metric", "unit", "lkmedia", "peer_name", "peer", "ratio", "goal", "status", "note"}


def run_bench(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "bench/run.py", "--json", str(out), "--cache", str(tmp_path / "cache"), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads(out.read_text())


def test_overhead_and_mix_write_json(tmp_path: Path) -> None:
    proc, res = run_bench(tmp_path, "--seconds", "2", "--only", "overhead,mix")
    assert res["seconds"] == 2
    for key in ("created", "host", "versions", "settings", "results", "details"):
        assert key in res, key
    assert res["versions"]["pyav"]
    assert res["versions"]["ffmpeg_cli"] is None or "ffmpeg" in res["versions"]["ffmpeg_cli"]
    rows = {r["name"]: r for r in res["results"]}
    assert set(rows) == {"overhead", "mix", "mix/graph"}
    for r in rows.values():
        assert set(r) == ROW_FIELDS
        assert r["status"] in ("pass", "fail", "info") or r["status"].startswith("skipped: "), r
    ov = rows["overhead"]
    assert ov["status"] in ("pass", "fail"), ov  # core only: it must always run
    assert isinstance(ov["lkmedia"], float) and ov["lkmedia"] > 0
    assert ov["goal"] == "<= 20"
    d = res["details"]["overhead"]
    assert d["k0"]["rc"] == 0 and d["k20"]["report"]["items"] == d["items"]
    assert d["k20"]["report"]["edges"] == 21
    # the table names every benchmark that ran
    assert "overhead" in proc.stdout and "mix" in proc.stdout


def test_missing_module_makes_a_skipped_row_not_a_crash(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    try:
        from bench import run
    finally:
        sys.path.remove(str(ROOT))
    ctx = run.Ctx(1, 1, tmp_path, tmp_path)
    rows = run.run_benchmarks(["overhead"], ctx, requires={"overhead": ("lkmedia.no_such_module",)})
    assert [(r.name, r.status, r.lkmedia) for r in rows] == [
        ("overhead", "skipped: lkmedia.no_such_module not available", None)]


@pytest.mark.parametrize("args, message", [
    (["--only", "nope"], "unknown benchmark"),
    (["--seconds", "0"], "--seconds must be positive"),
])
def test_bad_arguments_are_named(tmp_path: Path, args: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, "bench/run.py", "--json", str(tmp_path / "r.json"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not (tmp_path / "r.json").exists()
