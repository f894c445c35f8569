"""A real S3 server for tests: MinIO (built by scripts/install_s3_server.sh into
~/.cache/lkmedia/bin) on a free loopback port, with its data in a temporary directory.

``stop()`` / ``kill()`` / ``start()`` keep the data directory and the port, so a test can
take the server away in the middle of an upload and bring the same buckets back.
"""
from __future__ import annotations

import os
import secrets
import urllib.error
import urllib.request
from typing import Any

from ..dev.stack import CACHE_BIN
from .rtmp_server import free_port
from .server import ServerProcess, cached_binary


def minio_binary() -> str | None:
    """$LKMEDIA_MINIO, then the build cache's minio, then ``minio`` on PATH."""
    return cached_binary("LKMEDIA_MINIO", CACHE_BIN / "minio")


class MinioServer(ServerProcess):
    """``start()`` a MinIO on 127.0.0.1; ``endpoint``, ``access_key``, ``secret`` to
    connect; ``create_bucket(name)``; ``s3_config(bucket)`` for lkmedia.storage."""

    name = "minio"

    def __init__(self, root: str | os.PathLike[str] | None = None, port: int | None = None,
                 access_key: str = "lkmedia-test", secret: str | None = None) -> None:
        binary = minio_binary()
        if binary is None:
            raise RuntimeError("MinIO is not installed (run scripts/setup.sh)")
        self.binary = binary
        super().__init__(root, port)
        self.console_port = free_port()
        self.access_key = access_key
        self.secret = secret or "s3cr3t-" + secrets.token_hex(12)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [self.binary, "server", "--quiet", "--address", f"127.0.0.1:{self.port}",
                "--console-address", f"127.0.0.1:{self.console_port}", str(self.data_dir)]

    def environment(self) -> dict[str, str]:
        return {**os.environ, "MINIO_ROOT_USER": self.access_key, "MINIO_ROOT_PASSWORD": self.secret,
                "MINIO_BROWSER": "off", "MINIO_UPDATE": "off", "HOME": str(self.root)}

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/minio/health/ready", timeout=1.0) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

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
