"""A server the tests start as a child process on a free loopback port, with its data in
a directory of its own: ``stop()`` / ``kill()`` / ``start()`` keep the data and the port,
so a test can take the server away in the middle of an upload and bring it back."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

from .process import kill_process, stop_process
from .rtmp_server import free_port


class ServerProcess:
    """Subclasses say how to start (``command``, ``environment``) and when it is ready (``ready``)."""

    name = "server"

    def __init__(self, root: str | os.PathLike[str] | None = None, port: int | None = None,
                 tls: tuple[str, str] | None = None) -> None:
        """``tls``: (certificate, key) PEM files: the server speaks HTTPS with them."""
        self.tls = tls
        self._own_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix=f"lkm-{self.name}-"))
        self.data_dir = self.root / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def ssl_context(self) -> ssl.SSLContext | None:
        """For urllib calls to this server: trusts its certificate (None: plain HTTP)."""
        return ssl.create_default_context(cafile=self.tls[0]) if self.tls else None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def ready(self) -> bool:
        """Default: the port takes connections."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    @property
    def log(self) -> str:
        p = self.root / f"{self.name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 30.0) -> Self:
        if self.running():
            return self
        with open(self.root / f"{self.name}.log", "ab") as out:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, cwd=self.root,
                                         env=self.environment(), start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}): {self.log[-2000:]}")
            if self.ready():
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"{self.name} was not ready on port {self.port} within {timeout:g} s: {self.log[-2000:]}")

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM): the port closes, the data stays."""
        stop_process(self.proc, signal.SIGTERM, timeout)
        self.proc = None

    def kill(self) -> None:
        """Hard stop (SIGKILL): connections are reset mid-request."""
        kill_process(self.proc)
        self.proc = None

    def restart(self, down_for: float = 0.0) -> None:
        self.kill()
        if down_for:
            time.sleep(down_for)
        self.start()

    def cleanup(self) -> None:
        self.kill()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def cached_binary(env_var: str, *candidates: str | os.PathLike[str]) -> str | None:
    """``$env_var``, then each candidate path, then the first candidate's name on PATH."""
    names = [os.environ.get(env_var), *map(str, candidates)]
    if candidates:
        names.append(shutil.which(os.path.basename(str(candidates[0]))))
    for cand in names:
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None
