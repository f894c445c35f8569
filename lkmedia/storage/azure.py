"""AzureStorage: uploads to Azure Blob Storage (or Azurite) with azure-storage-blob's aio client.

Large files are staged as blocks of ``part_size`` and committed as one block blob, each
block retried on its own (RemoteStorage). The SDK's own retries are off so the Go retry
keys mean what they say. As the Go egress, the account's endpoint is
``https://<account>.blob.core.windows.net`` unless lkmedia's ``endpoint`` says otherwise;
``HTTPS_PROXY`` / ``NO_PROXY`` / ``SSL_CERT_FILE`` are honoured as the SDK does.
"""
from __future__ import annotations

import asyncio
import base64
import logging
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobBlock, BlobSasPermissions, ContentSettings, generate_blob_sas
from azure.storage.blob.aio import BlobServiceClient

from .base import StorageError
from .cloud_config import AzureConfig
from .remote import PRESIGN_SECONDS, ProgressFn, RemoteStorage

log = logging.getLogger("lkmedia.storage.azure")

#: Error codes that no retry can fix, and what they mean.
_FATAL = {
    "ContainerNotFound": "the container does not exist",
    "AuthenticationFailed": "the account key does not match the account",
    "AuthorizationFailure": "authorization failed (a wrong account key, or no write access to the container)",
    "AuthorizationPermissionMismatch": "the credentials may not write to this container",
    "InvalidResourceName": "the container or blob name is not valid",
    "AccountIsDisabled": "the storage account is disabled",
    "InvalidAuthenticationInfo": "the account key is not valid",
    "RequestBodyTooLarge": "the block is too large",
}


class AzureStorage(RemoteStorage):
    kind = "azure"

    def __init__(self, config: AzureConfig, *, prefix: str = "", on_progress: ProgressFn | None = None,
                 presign: bool = False) -> None:
        super().__init__(config, prefix=prefix, on_progress=on_progress, presign=presign)
        self.config: AzureConfig = config
        self._service: BlobServiceClient | None = None
        self._lock = asyncio.Lock()

    def describe(self) -> str:
        where = f" at {self.config.endpoint}" if self.config.endpoint else ""
        return f"Azure container {self.config.container_name!r} of account {self.config.account_name!r}{where}"

    def location(self, key: str) -> str:
        """LiveKit's location: https://<account>.blob.core.windows.net/<container>/<key>
        (the custom endpoint instead of the account's host when one is set)."""
        path = quote(key.lstrip("/"), safe="/!$&'()*+,;=:@~")
        return f"{self.config.account_url()}/{self.config.container_name}/{path}"

    def _secrets(self) -> tuple[str, ...]:
        return (self.config.account_key,)

    # -- client ------------------------------------------------------------------------
    async def _client(self) -> BlobServiceClient:
        async with self._lock:
            if self._service is None:
                c = self.config
                self._service = BlobServiceClient(
                    c.account_url(), credential={"account_name": c.account_name, "account_key": c.account_key},
                    retry_total=0,  # one try: we retry ourselves
                    connection_timeout=5, read_timeout=60)
            return self._service

    async def _blob(self, key: str) -> Any:
        return (await self._client()).get_blob_client(self.config.container_name, key)

    async def close(self) -> None:
        service, self._service = self._service, None
        if service is not None:
            await service.close()

    # -- errors ------------------------------------------------------------------------
    def _error(self, what: str, e: BaseException) -> StorageError:
        if isinstance(e, HttpResponseError):
            raw = getattr(e, "error_code", None)
            code = str(getattr(raw, "value", raw) or "")  # an enum, or the header's text
            status = int(e.status_code or 0)
            if not code and status == 404 and what.startswith("preflight"):
                code = "ContainerNotFound"
            if isinstance(e, ClientAuthenticationError) and code not in _FATAL:
                code = code or "AuthenticationFailed"
            reason = _FATAL.get(code) or str(e.reason or code or f"HTTP {status}")
            retryable = code not in _FATAL and (status >= 500 or status in (0, 408, 429))
            msg = f"{what} failed for {self.describe()}: {reason} ({code or status})"
            return StorageError(self._scrub(msg), retryable=retryable, code=code or str(status))
        if isinstance(e, ServiceRequestError | ServiceResponseError):
            cause = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
            return StorageError(self._scrub(f"{what} failed for {self.describe()}: cannot reach the endpoint "
                                            f"({cause})"), retryable=True, code="connect")
        return self._common_error(what, e)

    # -- one attempt each --------------------------------------------------------------
    def _settings(self, content_type: str) -> ContentSettings:
        return ContentSettings(content_type=content_type)

    async def _put(self, key: str, data: bytes, content_type: str) -> None:
        blob = await self._blob(key)
        await blob.upload_blob(data, overwrite=True, length=len(data), content_settings=self._settings(content_type))

    async def _parts_begin(self, key: str, content_type: str) -> Any:
        return None  # blocks need no session: they are committed by their ids

    async def _part(self, key: str, state: Any, number: int, offset: int, chunk: bytes, total: int) -> Any:
        block_id = base64.b64encode(f"lkmedia-{number:08d}".encode()).decode()
        blob = await self._blob(key)
        await blob.stage_block(block_id, chunk, length=len(chunk))
        return block_id

    async def _parts_end(self, key: str, state: Any, parts: list[Any], content_type: str) -> None:
        blob = await self._blob(key)
        await blob.commit_block_list([BlobBlock(block_id=b) for b in parts],
                                     content_settings=self._settings(content_type))

    async def _size(self, key: str) -> int | None:
        blob = await self._blob(key)
        try:
            props = await blob.get_blob_properties()
        except ResourceNotFoundError:
            return None
        return int(props.size)

    async def _get(self, key: str) -> bytes:
        blob = await self._blob(key)
        stream = await blob.download_blob()
        return bytes(await stream.readall())

    async def _remove(self, key: str) -> None:
        blob = await self._blob(key)
        try:
            await blob.delete_blob()
        except ResourceNotFoundError:
            pass

    async def signed_url(self, key: str) -> str | None:
        """A read-only SAS URL signed with the account key."""
        c = self.config
        token = generate_blob_sas(c.account_name, c.container_name, key, account_key=c.account_key,
                                  permission=BlobSasPermissions(read=True),
                                  expiry=datetime.now(UTC) + timedelta(seconds=PRESIGN_SECONDS))
        return f"{self.location(key)}?{token}"

    async def list_keys(self, prefix: str = "") -> list[str]:
        container = (await self._client()).get_container_client(self.config.container_name)

        async def names() -> list[str]:
            return [b.name async for b in container.list_blobs(name_starts_with=prefix or None)]

        return await self._retry("listing", names)
