"""fake-gcs-server for tests (``go install github.com/fsouza/fake-gcs-server``, built by
scripts/install_storage_emulators.sh into ~/.cache/lkmedia/bin), plain HTTP on a free
loopback port, objects on disk so a restart keeps them. It accepts any credentials."""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from ..dev.stack import CACHE_BIN
from .server import ServerProcess, cached_binary


def fake_gcs_binary() -> str | None:
    """$LKMEDIA_FAKE_GCS, then the cache's fake-gcs-server, then one on PATH."""
    return cached_binary("LKMEDIA_FAKE_GCS", CACHE_BIN / "fake-gcs-server")


class FakeGCSServer(ServerProcess):
    """``start()``; ``endpoint`` (the API root: lkmedia's gcp ``endpoint`` or
    STORAGE_EMULATOR_HOST); ``create_bucket(name)``; ``objects(bucket)``; ``gcp_config(bucket)``."""

    name = "fake-gcs"

    def __init__(self, root: str | os.PathLike[str] | None = None, port: int | None = None,
                 tls: tuple[str, str] | None = None) -> None:
        binary = fake_gcs_binary()
        if binary is None:
            raise RuntimeError("fake-gcs-server is not installed (run scripts/setup.sh --test)")
        self.binary = binary
        super().__init__(root, port, tls)

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        tls = ["-cert-location", self.tls[0], "-private-key-location", self.tls[1]] if self.tls else []
        return [self.binary, "-scheme", self.scheme, "-host", "127.0.0.1", "-port", str(self.port),
                "-backend", "filesystem", "-filesystem-root", str(self.data_dir),
                "-public-host", f"127.0.0.1:{self.port}", "-external-url", self.endpoint, "-log-level", "warn", *tls]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/storage/v1/b", timeout=1.0, context=self.ssl_context()) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.endpoint}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10, context=self.ssl_context()) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    def create_bucket(self, name: str) -> str:
        self._json("POST", "/storage/v1/b", {"name": name})
        return name

    def objects(self, bucket: str) -> dict[str, int]:
        """Every object in ``bucket``: name -> size."""
        out: dict[str, int] = {}
        token = ""
        while True:
            q = f"?pageToken={urllib.parse.quote(token)}" if token else ""
            res = self._json("GET", f"/storage/v1/b/{bucket}/o{q}")
            out.update({o["name"]: int(o["size"]) for o in res.get("items", [])})
            token = res.get("nextPageToken") or ""
            if not token:
                return out

    def download(self, bucket: str, name: str) -> bytes:
        url = f"{self.endpoint}/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}?alt=media"
        with urllib.request.urlopen(url, timeout=10, context=self.ssl_context()) as r:
            return bytes(r.read())

    def metadata(self, bucket: str, name: str) -> dict[str, Any]:
        res: dict[str, Any] = self._json("GET", f"/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}")
        return res

    def gcp_config(self, bucket: str, **overrides: Any) -> Any:
        from ..storage.cloud_config import GCPConfig

        args: dict[str, Any] = {"bucket": bucket, "endpoint": self.endpoint}
        args.update(overrides)
        return GCPConfig(**args)
