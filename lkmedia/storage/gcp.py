"""GCPStorage: uploads to Google Cloud Storage with gcloud-aio-storage (asyncio, aiohttp).

Large files go as one resumable upload sent in ``part_size`` chunks (a multiple of
256 KiB), each chunk retried on its own (RemoteStorage): the bytes already stored are not
sent again (a session the server no longer knows starts the upload again). Credentials:
``credentials_json``, else ``GOOGLE_APPLICATION_CREDENTIALS``, else the machine's default
credentials, as the Go egress. The API root is Google's unless ``STORAGE_EMULATOR_HOST``
(an emulator, no token, as Google's SDKs) or lkmedia's ``endpoint`` says otherwise (a
plain-HTTP one is an emulator too). ``HTTPS_PROXY`` / ``NO_PROXY`` / ``SSL_CERT_FILE`` are
honoured, and ``proxy_config`` as the Go key.
"""
from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import time
from typing import Any, cast
from urllib.parse import quote

import aiohttp
from gcloud.aio.storage import Bucket
from gcloud.aio.storage import Storage as GCSClient

from .base import StorageError
from .cloud_config import GCPConfig
from .remote import PRESIGN_SECONDS, RESTART, ProgressFn, RemoteStorage

log = logging.getLogger("lkmedia.storage.gcp")

_FATAL = {
    401: "the credentials were refused",
    403: "the credentials may not write to this bucket",
    404: "the bucket does not exist",
    400: "the server refused the request",
    412: "a precondition failed",
}


class GCPStorage(RemoteStorage):
    kind = "gcp"

    def __init__(self, config: GCPConfig, *, prefix: str = "", on_progress: ProgressFn | None = None,
                 presign: bool = False) -> None:
        super().__init__(config, prefix=prefix, on_progress=on_progress, presign=presign)
        self.config: GCPConfig = config
        self._creds = config.credentials()
        emulator = "" if config.endpoint else os.environ.get("STORAGE_EMULATOR_HOST", "")
        if emulator and "://" not in emulator:
            emulator = "http://" + emulator  # as Google's SDKs read it
        endpoint = config.endpoint if "://" in config.endpoint or not config.endpoint else "https://" + config.endpoint
        self.api_root = (endpoint or emulator or "https://storage.googleapis.com").rstrip("/")
        # An emulator gets no token, as Google's SDKs treat one; so does a plain-HTTP endpoint.
        self.emulated = bool(emulator) or self.api_root.startswith("http://")
        self._gcs: GCSClient | None = None
        self._http: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()

    def describe(self) -> str:
        where = f" at {self.api_root}" if self.api_root != "https://storage.googleapis.com" else ""
        return f"GCS bucket {self.config.bucket!r}{where}"

    def location(self, key: str) -> str:
        """LiveKit's location: https://<bucket>.storage.googleapis.com/<key> (the API root's
        /<bucket>/<key> on an emulator or custom endpoint)."""
        path = quote(key.lstrip("/"), safe="/!$&'()*+,;=:@~")
        if self.api_root == "https://storage.googleapis.com":
            return f"https://{self.config.bucket}.storage.googleapis.com/{path}"
        return f"{self.api_root}/{self.config.bucket}/{path}"

    def _secrets(self) -> tuple[str, ...]:
        key = str((self._creds or {}).get("private_key") or "")
        return (self.config.credentials_json, key, self.config.proxy_password)

    # -- client ------------------------------------------------------------------------
    async def _client(self) -> GCSClient:
        async with self._lock:
            if self._gcs is None:
                timeout = aiohttp.ClientTimeout(sock_connect=5, sock_read=60)
                self._http = aiohttp.ClientSession(timeout=timeout, trust_env=True, proxy=self.config.proxy())
                service_file = io.StringIO(json.dumps(self._creds)) if self._creds else None
                self._gcs = GCSClient(service_file=service_file, session=cast(Any, self._http), api_root=self.api_root,
                                      api_is_dev=self.emulated)
            if not self.emulated:
                await self._ensure_token(self._gcs.token)
            return self._gcs

    async def _ensure_token(self, token: Any) -> None:
        """An access token, fetched once per attempt: gcloud-aio-auth retries a refused or
        unreachable token endpoint 5 times with waits of up to a minute, which would turn
        a revoked key into a slow timeout; here it fails at once with its reason (and
        RemoteStorage's retries apply). The library then uses the token it holds."""
        if token.access_token and time.time() < token.access_token_refresh_after:
            return
        acquire = getattr(type(token).acquire_access_token, "__wrapped__", None)  # without its retries
        try:
            if acquire is not None:
                await acquire(token, timeout=10)
            else:
                await token.get()
        except aiohttp.ClientResponseError as e:
            status = int(e.status or 0)
            raise StorageError(self._scrub(
                f"the access token for {self.describe()} was refused by {token.token_uri} (HTTP {status}): "
                "the service account key may be revoked or wrong"), retryable=status >= 500 or status == 429,
                code=str(status)) from None
        except aiohttp.ClientConnectionError as e:
            raise StorageError(self._scrub(f"cannot get an access token for {self.describe()} from "
                                           f"{token.token_uri}: {e}"), retryable=True, code="connect") from None

    async def _headers(self) -> dict[str, str]:
        if self.emulated:
            return {}
        gcs = await self._client()
        return {"Authorization": f"Bearer {await gcs.token.get()}"}

    async def close(self) -> None:
        gcs, http, self._gcs, self._http = self._gcs, self._http, None, None
        if gcs is not None:
            await gcs.close()
        if http is not None and not http.closed:
            await http.close()

    # -- errors ------------------------------------------------------------------------
    def _error(self, what: str, e: BaseException) -> StorageError:
        if isinstance(e, aiohttp.ClientResponseError):
            status = int(e.status or 0)
            reason = _FATAL.get(status) if status != 404 or what.startswith("preflight") else None
            reason = reason or str(e.message or f"HTTP {status}").splitlines()[0][:200]
            retryable = status >= 500 or status in (0, 408, 429)
            return StorageError(self._scrub(f"{what} failed for {self.describe()}: {reason} (HTTP {status})"),
                                retryable=retryable, code=str(status))
        if isinstance(e, aiohttp.ClientConnectionError):
            return StorageError(self._scrub(f"{what} failed for {self.describe()}: cannot reach the API ({e})"),
                                retryable=True, code="connect")
        if isinstance(e, ValueError | KeyError) and "token" in str(e).lower():
            return StorageError(self._scrub(f"{what} failed for {self.describe()}: no usable credentials ({e})"))
        return self._common_error(what, e)

    # -- one attempt each --------------------------------------------------------------
    async def _put(self, key: str, data: bytes, content_type: str) -> None:
        gcs = await self._client()
        await gcs.upload(self.config.bucket, key, data, content_type=content_type, force_resumable_upload=False,
                         timeout=60)

    async def _parts_begin(self, key: str, content_type: str) -> tuple[str, str]:
        await self._client()
        assert self._http is not None
        url = f"{self.api_root}/upload/storage/v1/b/{quote(self.config.bucket, safe='')}/o"
        headers = {**await self._headers(), "Content-Type": "application/json; charset=UTF-8",
                   "X-Upload-Content-Type": content_type}
        async with self._http.post(url, params={"uploadType": "resumable", "name": key}, headers=headers,
                                   data=json.dumps({"name": key, "contentType": content_type})) as r:
            r.raise_for_status()
            return str(r.headers["Location"]), content_type  # the session's URL

    async def _part(self, key: str, state: Any, number: int, offset: int, chunk: bytes, total: int) -> Any:
        assert self._http is not None
        end = offset + len(chunk)
        session, content_type = state
        headers = {**await self._headers(), "Content-Type": content_type,
                   "Content-Range": f"bytes {offset}-{end - 1}/{total if end == total else '*'}"}
        async with self._http.put(session, data=chunk, headers=headers) as r:
            if r.status in (404, 410):
                raise StorageError(f"upload of {key!r} to {self.describe()}: the resumable upload session is gone "
                                   f"(HTTP {r.status})", code=RESTART)
            if r.status != 308:  # 308: chunk stored, send the next one
                r.raise_for_status()
        return number

    async def _parts_end(self, key: str, state: Any, parts: list[Any], content_type: str) -> None:
        return None  # the last chunk (its Content-Range names the total) finished the object

    async def _parts_abort(self, key: str, state: Any) -> None:
        if self._http is not None:
            async with self._http.delete(state[0], headers=await self._headers()):
                pass

    async def _size(self, key: str) -> int | None:
        gcs = await self._client()
        try:
            meta = await gcs.download_metadata(self.config.bucket, key, timeout=30)
        except aiohttp.ClientResponseError as e:
            if e.status == 404:
                return None
            raise
        return int(meta["size"])

    async def _get(self, key: str) -> bytes:
        gcs = await self._client()
        return bytes(await gcs.download(self.config.bucket, key, timeout=60))

    async def _remove(self, key: str) -> None:
        gcs = await self._client()
        try:
            await gcs.delete(self.config.bucket, key, timeout=30)
        except aiohttp.ClientResponseError as e:
            if e.status != 404:
                raise

    async def signed_url(self, key: str) -> str | None:
        """A V4 signed GET URL, signed locally with the service account's key (None
        without one: the location stays plain)."""
        if not self._creds or not self._creds.get("private_key"):
            log.warning("%s: generate_presigned_url needs a service account key; the location stays plain",
                        self.describe())
            return None
        gcs = await self._client()
        blob = Bucket(gcs, self.config.bucket).new_blob(key)
        return str(await blob.get_signed_url(PRESIGN_SECONDS))
