"""Measuring the egress service's process tree (its job processes with it) and running
the benchmark's children: shared by bench/egress.py, bench/livekit_rig.py and the
benchmarks built on them."""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench import peers
from lkmedia.worker.sampler import process_tree

_TCK = os.sysconf("SC_CLK_TCK")


# -- measuring the service child ---------------------------------------------------------
def proc_cpu(pid: int, known: set[int] | None = None) -> float:
    """user + sys seconds of ``pid`` and its descendants (every job runs in its own
    process), all their threads, and the children they have reaped. ``known``: the tree's
    processes when a job started (``process_tree``); a process the service started after
    that is not counted: it is the spare that replaces the one the job took (its imports
    cost about a CPU second), not the job's."""
    total = 0.0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat", encoding="ascii") as f:
                s = f.read()
        except OSError:
            continue
        fields = s[s.rindex(")") + 2:].split()  # fields[0] is the state (field 3 of stat)
        if known is not None and p not in known and int(fields[1]) == pid:  # (_new_spare)
            continue
        total += sum(int(x) for x in fields[11:15]) / _TCK  # utime, stime, cutime, cstime
    return total


async def settle(pid: int, rate: float, timeout: float = 15.0) -> None:
    """Waits until the service's process tree uses at most ``rate`` + 0.02 CPU s/s over
    half a second: a job that just ended has the service start a fresh spare process
    (imports: about a CPU second), which would otherwise be counted in the next job."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c0 = proc_cpu(pid)
        await asyncio.sleep(0.5)
        if (proc_cpu(pid) - c0) / 0.5 <= rate + 0.02:
            return


def _new_spare(p: int, pid: int, known: set[int] | None) -> bool:
    """Whether ``p`` is a child the service ``pid`` started after ``known`` was taken."""
    if known is None or p in known:
        return False
    stat = Path(f"/proc/{p}/stat").read_text(encoding="ascii", errors="replace")
    return int(stat[stat.rindex(")") + 2:].split()[1]) == pid


def thread_cpu(pid: int, known: set[int] | None = None) -> dict[str, float]:
    """user + sys seconds per thread name (comm) of the live threads of ``pid`` and its
    descendants; a process's main thread (its event loop) is ``<comm> (main)``, the
    service's own ``<comm> (service)``. ``known`` as for proc_cpu."""
    out: dict[str, float] = {}
    for p in process_tree(pid):
        try:
            if _new_spare(p, pid, known):
                continue
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        for t in tasks:
            try:
                s = (t / "stat").read_text(encoding="ascii", errors="replace")
            except OSError:
                continue
            main = " (service)" if p == pid else " (main)"
            name = s[s.index("(") + 1: s.rindex(")")] + (main if t.name == str(p) else "")
            fields = s[s.rindex(")") + 2:].split()
            out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / _TCK
    return out


# -- children ----------------------------------------------------------------------------
class Child:
    """A child process with its output in a log file; stop() = SIGTERM, then SIGKILL."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str]) -> None:
        self.log = log
        self._f = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self._f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=peers.ROOT, start_new_session=True)
        self.rusage_cpu: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 8) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").strip().splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and reap with os.wait4 (rusage kept in ``rusage_cpu``)."""
        p = self.proc
        if p.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while True:
                pid, status, ru = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    p.returncode = os.waitstatus_to_exitcode(status)
                    self.rusage_cpu = ru.ru_utime + ru.ru_stime
                    break
                if time.monotonic() > deadline:
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()
                    _, status, ru = os.wait4(p.pid, 0)
                    p.returncode = os.waitstatus_to_exitcode(status)
                    self.rusage_cpu = ru.ru_utime + ru.ru_stime
                    break
                time.sleep(0.05)
        self._f.close()
        return int(p.returncode)


def _env(**extra: str) -> dict[str, str]:
    env = peers.workload_env()
    env.update(extra)
    return env


def _wait_http(url: str, child: Child, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not child.alive():
            raise RuntimeError(f"egress service exited with code {child.proc.returncode}: {child.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"egress service health port did not answer within {timeout:g} s: {child.tail()}")
        time.sleep(0.1)


#: what the service's threads are (names as the kernel shows them, 15 characters).
THREAD_LABELS = {"python3": "unnamed workers (x264, AAC, offloaded encode/mux)", "python3 (main)": "event loop",
                 "python3 (service)": "the service's event loop",
                 "VideoDecoderQue": "VP8 decode (libwebrtc)", "tokio-rt-worker": "livekit FFI (tokio)"}


def _by_thread(runs: list[dict[str, Any]]) -> str:
    """Per-thread CPU per recorded second, summed over the runs."""
    wall = sum(r["recording_wall_s"] for r in runs)
    total: dict[str, float] = {}
    for r in runs:
        for k, v in r["cpu_active_to_stop_by_thread_name"].items():
            label = THREAD_LABELS.get(k, "other webrtc threads")
            total[label] = total.get(label, 0.0) + v
    return ", ".join(f"{k} {v / wall:.3f}" for k, v in sorted(total.items(), key=lambda kv: -kv[1]))
