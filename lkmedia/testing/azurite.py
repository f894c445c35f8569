"""Azurite's blob service for tests (npm ``azurite``, installed by
scripts/install_storage_emulators.sh into ~/.cache/lkmedia/azurite), on a free loopback
port with an account of its own whose key Azurite checks (shared-key signatures)."""
from __future__ import annotations

import base64
import os
import secrets
from typing import Any

from ..dev.stack import CACHE_BIN
from .server import ServerProcess, cached_binary


def azurite_binary() -> str | None:
    """$LKMEDIA_AZURITE, then the cache's azurite-blob, then ``azurite-blob`` on PATH."""
    return cached_binary("LKMEDIA_AZURITE", CACHE_BIN.parent / "azurite" / "node_modules" / ".bin" / "azurite-blob")


class AzuriteServer(ServerProcess):
    """``start()``; ``endpoint`` (the account's blob endpoint, path style), ``account_name``,
    ``account_key``; ``create_container(name)``; ``azure_config(container)``."""

    name = "azurite"

    def __init__(self, root: str | os.PathLike[str] | None = None, port: int | None = None,
                 account_name: str = "lkmtest", tls: tuple[str, str] | None = None) -> None:
        binary = azurite_binary()
        if binary is None:
            raise RuntimeError("Azurite is not installed (run scripts/setup.sh --test)")
        self.binary = binary
        super().__init__(root, port, tls)
        self.account_name = account_name
        self.account_key = base64.b64encode(secrets.token_bytes(32)).decode()

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/{self.account_name}"

    def command(self) -> list[str]:
        return [self.binary, "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location",
                str(self.data_dir), "--silent", "--skipApiVersionCheck", "--disableProductStyleUrl",
                "--disableTelemetry", "--loose", *(["--cert", self.tls[0], "--key", self.tls[1]] if self.tls else [])]

    def environment(self) -> dict[str, str]:
        return {**os.environ, "AZURITE_ACCOUNTS": f"{self.account_name}:{self.account_key}"}

    def client(self) -> Any:
        """A synchronous BlobServiceClient with the account key (test set-up, listing)."""
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient(self.endpoint, credential={"account_name": self.account_name,
                                                            "account_key": self.account_key},
                                 connection_verify=self.tls[0] if self.tls else True)

    def create_container(self, name: str) -> str:
        self.client().create_container(name)
        return name

    def objects(self, container: str) -> dict[str, int]:
        """Every blob in ``container``: name -> size."""
        cc = self.client().get_container_client(container)
        return {b.name: int(b.size) for b in cc.list_blobs()}

    def download(self, container: str, name: str) -> bytes:
        return bytes(self.client().get_blob_client(container, name).download_blob().readall())

    def azure_config(self, container: str, **overrides: Any) -> Any:
        from ..storage.cloud_config import AzureConfig

        args: dict[str, Any] = {"account_name": self.account_name, "account_key": self.account_key,
                                "container_name": container, "endpoint": self.endpoint}
        args.update(overrides)
        return AzureConfig(**args)
