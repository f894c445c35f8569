"""A real nginx-rtmp server for tests: records every published stream to FLV.

Runs as the current user in a temporary prefix (no root paths), on a free loopback
port, so that tests probe what actually arrived at an RTMP server.
"""
from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

from .process import kill_process, stop_process

MODULE = "/usr/lib/nginx/modules/ngx_rtmp_module.so"

_CONF = """\
load_module {module};
worker_processes 1;
master_process off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 64; }}
rtmp {{
    server {{
        listen 127.0.0.1:{port};
        chunk_size 4096;
        application {app} {{
            live on;
            record all;
            record_path {record_dir};
            record_unique on;
            record_suffix .flv;
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NginxRtmp:
    """``start()`` / ``stop()`` / ``restart()`` an nginx with an ``app`` application.

    ``url(key)`` is the publish URL; ``recordings(key)`` lists the FLV files recorded
    for that key, oldest first (record_unique: one file per publish session).
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, port: int | None = None,
                 app: str = "live") -> None:
        if shutil.which("nginx") is None or not os.path.exists(MODULE):
            raise RuntimeError("nginx with libnginx-mod-rtmp is not installed")
        self._own_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="lkm-nginx-"))
        self.record_dir = self.root / "records"
        self.record_dir.mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)  # nginx opens logs/ relative to the prefix
        self.port = port or free_port()
        self.app = app
        self.conf = self.root / "nginx.conf"
        self.conf.write_text(_CONF.format(module=MODULE, prefix=self.root, port=self.port,
                                          app=app, record_dir=self.record_dir))
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, key: str) -> str:
        return f"rtmp://127.0.0.1:{self.port}/{self.app}/{key}"

    def recordings(self, key: str) -> list[str]:
        files = glob.glob(str(self.record_dir / f"{key}-*.flv"))
        return sorted(files, key=os.path.getmtime)

    @property
    def error_log(self) -> str:
        p = self.root / "error.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def start(self, timeout: float = 10.0) -> NginxRtmp:
        if self.proc is not None and self.proc.poll() is None:
            return self
        with open(self.root / "stderr.log", "ab") as err:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                ["nginx", "-p", str(self.root), "-c", str(self.conf), "-g", "daemon off;"],
                stdout=subprocess.DEVNULL, stderr=err,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited ({self.proc.returncode}): "
                                   f"{(self.root / 'stderr.log').read_text(errors='replace')[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not accept connections on port {self.port} within {timeout:g} s")

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful quit (SIGQUIT): recordings are closed; publishers see the socket close."""
        stop_process(self.proc, signal.SIGQUIT, timeout)
        self.proc = None

    def kill(self) -> None:
        """Hard stop (SIGKILL): connections are reset, recordings stay as written."""
        kill_process(self.proc)
        self.proc = None

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        if down_for:
            time.sleep(down_for)
        self.start()

    def cleanup(self) -> None:
        self.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
