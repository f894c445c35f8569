"""The egress service as tests run it: a child process, its metrics. (Driving it through
livekit-server's API is product code: lkmedia.dev.egress.)"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from ..dev.egress import TERMINAL, EgressEnded, S, service_config_body, wait_egress

__all__ = ["S", "TERMINAL", "EgressEnded", "EgressServiceProcess", "egress_service", "metric_value",
           "service_config_body", "wait_egress"]


@asynccontextmanager
async def egress_service(stack: Any, tmp_path: Path, extra: str = "") -> AsyncIterator[Any]:
    """An EgressService in this process (health and Prometheus ports picked free), its
    jobs in ``tmp_path/egress``; closed (jobs stopped, outputs finalised) on the way out."""
    from ..dev.stack import free_port
    from ..service.config import parse_config
    from ..service.egress import EgressService

    body = service_config_body(stack, f"health_port: {free_port()}\nprometheus_port: {free_port()}\n{extra}")
    svc = EgressService(parse_config(body), tmp_dir=str(tmp_path / "egress"))
    await svc.start()
    try:
        yield svc
    finally:
        await svc.close(drain_timeout=20)


def metric_value(text: str, name: str, match: Callable[[str], bool] = lambda _: True) -> float | None:
    """The first sample of ``name`` in Prometheus text whose line ``match`` accepts."""
    for line in text.splitlines():
        if (line.startswith(name + "{") or line.startswith(name + " ")) and match(line):
            return float(line.rsplit(" ", 1)[1])
    return None


class EgressServiceProcess:
    """``python -m lkmedia egress`` (or ``dispatcher``) as a child process, as it runs in production: config by
    EGRESS_CONFIG_BODY (never argv), health port picked free, log in ``log_path``, its own
    temporary directory. ``signal()`` / ``kill()`` for drain and crash tests."""

    def __init__(self, body: str, work_dir: str | os.PathLike[str], *, name: str = "egress",
                 command: str = "egress") -> None:
        from ..dev.stack import free_port

        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.health_port = free_port()
        self.prometheus_port = free_port()
        self.body = body + f"health_port: {self.health_port}\nprometheus_port: {self.prometheus_port}\n"
        self.log_path = self.work_dir / f"{name}.log"
        self.tmp_dir = self.work_dir / "tmp"
        self.command = command  # or "dispatcher"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def egress_dir(self) -> Path:
        """Where the service writes each egress (``<egress_id>/...``)."""
        return self.tmp_dir / "lkmedia-egress"

    def start(self, timeout: float = 60.0) -> EgressServiceProcess:
        self.tmp_dir.mkdir(exist_ok=True)
        env = {**os.environ, "EGRESS_CONFIG_BODY": self.body, "TMPDIR": str(self.tmp_dir)}
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen([sys.executable, "-m", "lkmedia", self.command], stdout=logf,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"egress service exited with {self.proc.returncode}: {self.tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/", timeout=1):
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"egress service not healthy within {timeout:g} s: {self.tail()}")
            time.sleep(0.1)

    def metric(self, name: str) -> float | None:
        """A value from its Prometheus endpoint (the first sample of ``name``)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.prometheus_port}/metrics", timeout=5) as r:
            return metric_value(r.read().decode(), name)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGINT (stop every job cleanly), then SIGKILL after ``timeout``."""
        from .process import stop_process

        stop_process(self.proc, signal.SIGINT, timeout)
        return self.proc.returncode if self.proc is not None else None

    def tail(self, n: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def grep(self, *words: str, n: int = 40) -> str:
        """The last ``n`` log lines that name any of ``words`` (egress ids, say)."""
        if not self.log_path.exists():
            return ""
        lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if any(w in ln for w in words)]
        return "\n".join(lines[-n:])

    def __enter__(self) -> EgressServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
