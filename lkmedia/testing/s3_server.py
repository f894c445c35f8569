"""A real S3 server for tests: MinIO (built by scripts/install_s3_server.sh into
~/.cache/lkmedia/bin) on a free loopback port, with its data in a temporary directory.

``stop()`` / ``kill()`` / ``start()`` keep the data directory and the port, so a test can
take the server away in the middle of an upload and bring the same buckets back.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Self

from ..dev.stack import CACHE_BIN
from .process import kill_process, stop_process
from .rtmp_server import free_port


def minio_binary() -> str | None:
    """$LKMEDIA_MINIO, then the build cache's minio, then ``minio`` on PATH."""
    for cand in (os.environ.get("LKMEDIA_MINIO"), str(CACHE_BIN / "minio"), shutil.which("minio")):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


class MinioServer:
    """``start()`` a MinIO on 127.0.0.1; ``endpoint``, ``access_key``, ``secret`` to
    connect; ``create_bucket(name)``; ``s3_config(bucket)`` for lkmedia.storage."""

    def __init__(self, root: str | os.PathLike[str] | None = None, port: int | None = None,
                 access_key: str = "lkmedia-test", secret: str | None = None) -> None:
        binary = minio_binary()
        if binary is None:
            raise RuntimeError("MinIO is not installed (run scripts/setup.sh)")
        self.binary = binary
        self._own_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="lkm-minio-"))
        self.data_dir = self.root / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.console_port = free_port()
        self.access_key = access_key
        self.secret = secret or "s3cr3t-" + secrets.token_hex(12)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        p = self.root / "minio.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 30.0) -> Self:
        if self.running():
            return self
        env = {**os.environ, "MINIO_ROOT_USER": self.access_key, "MINIO_ROOT_PASSWORD": self.secret,
               "MINIO_BROWSER": "off", "MINIO_UPDATE": "off", "HOME": str(self.root)}
        with open(self.root / "minio.log", "ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, "server", "--quiet", "--address", f"127.0.0.1:{self.port}",
                 "--console-address", f"127.0.0.1:{self.console_port}", str(self.data_dir)],
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"minio exited ({self.proc.returncode}): {self.log[-2000:]}")
            if self._ready():
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"minio was not ready on port {self.port} within {timeout:g} s: {self.log[-2000:]}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/minio/health/ready", timeout=1.0) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

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

    # -- buckets -------------------------------------------------------------------
    def client(self) -> Any:
        """A synchronous boto3 client with the root credentials (for test set-up)."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def s3_config(self, bucket: str, **overrides: Any) -> Any:
        """An lkmedia S3Config for ``bucket`` on this server (path style, like MinIO wants)."""
        from ..storage.config import S3Config

        args: dict[str, Any] = {"bucket": bucket, "access_key": self.access_key, "secret": self.secret,
                                "endpoint": self.endpoint, "region": "us-east-1", "force_path_style": True}
        args.update(overrides)
        return S3Config(**args)

    def cleanup(self) -> None:
        self.kill()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
