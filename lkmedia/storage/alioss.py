"""AliOSSStorage: uploads to Alibaba Cloud OSS with the official SDK's asyncio client
(``alibabacloud-oss-v2``, V4 signatures).

Large files are multipart uploads of ``part_size`` parts, each retried on its own
(RemoteStorage); the SDK's own retries are off so the Go retry keys mean what they say.
The location is LiveKit's ``https://<bucket>.<endpoint host>/<key>``; an endpoint that is
an IP address is addressed path style (the SDK does the same). ``HTTPS_PROXY`` /
``NO_PROXY`` / ``SSL_CERT_FILE`` are honoured.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import alibabacloud_oss_v2 as oss
from alibabacloud_oss_v2.aio import AsyncClient
from alibabacloud_oss_v2.aio.transport import AioHttpClient

from .base import StorageError
from .cloud_config import AliOSSConfig
from .remote import PRESIGN_SECONDS, S3_STYLE_FATAL, ProgressFn, RemoteStorage

log = logging.getLogger("lkmedia.storage.alioss")

_FATAL = {**S3_STYLE_FATAL, "InvalidObjectName": "the object name is not valid"}


class AliOSSStorage(RemoteStorage):
    kind = "alioss"

    def __init__(self, config: AliOSSConfig, *, prefix: str = "", on_progress: ProgressFn | None = None,
                 presign: bool = False) -> None:
        super().__init__(config, prefix=prefix, on_progress=on_progress, presign=presign)
        self.config: AliOSSConfig = config
        self.region = config.signing_region()
        self._client: AsyncClient | None = None
        self._http: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()

    def _endpoint(self) -> str:
        e = self.config.endpoint or f"oss-{self.region}.aliyuncs.com"
        return e if "://" in e else "https://" + e

    def describe(self) -> str:
        return f"OSS bucket {self.config.bucket!r} at {self.config.endpoint or self.region}"

    def location(self, key: str) -> str:
        """LiveKit's location: https://<bucket>.<endpoint host>/<key> (an IP endpoint:
        <endpoint>/<bucket>/<key>, where the objects really are)."""
        path = quote(key.lstrip("/"), safe="/!$&'()*+,;=:@~")
        parts = urlsplit(self._endpoint())
        if _is_ip(parts.hostname or ""):
            return f"{parts.scheme}://{parts.netloc}/{self.config.bucket}/{path}"
        return f"https://{self.config.bucket}.{parts.netloc}/{path}"

    def _secrets(self) -> tuple[str, ...]:
        return (self.config.secret,)

    # -- client ------------------------------------------------------------------------
    async def _oss(self) -> AsyncClient:
        async with self._lock:
            if self._client is None:
                c = self.config
                self._http = aiohttp.ClientSession(trust_env=True)  # proxy and CA variables
                cfg = oss.config.Config(
                    region=self.region, endpoint=self._endpoint(),
                    credentials_provider=oss.credentials.StaticCredentialsProvider(c.access_key, c.secret),
                    retryer=oss.retry.NopRetryer(),  # one try: we retry ourselves
                    http_client=AioHttpClient(session=self._http, connect_timeout=5, readwrite_timeout=60),
                    signature_version="v4")
                self._client = AsyncClient(cfg)
            return self._client

    async def close(self) -> None:
        client, http, self._client, self._http = self._client, self._http, None, None
        if client is not None:
            await client.close()
        if http is not None and not http.closed:
            await http.close()

    # -- errors ------------------------------------------------------------------------
    def _error(self, what: str, e: BaseException) -> StorageError:
        cause = e.unwrap() if isinstance(e, oss.exceptions.OperationError) else e
        if isinstance(cause, oss.exceptions.ServiceError):
            code, status = str(cause.code or ""), int(cause.status_code or 0)
            reason = _FATAL.get(code) or str(cause.message or code or f"HTTP {status}")
            retryable = code not in _FATAL and (status >= 500 or status in (0, 408, 429))
            return StorageError(self._scrub(f"{what} failed for {self.describe()}: {reason} ({code or status})"),
                                retryable=retryable, code=code or str(status))
        if isinstance(cause, oss.exceptions.RequestError | oss.exceptions.ResponseError):
            inner = getattr(cause, "_error", None) or cause
            why = f"{type(inner).__name__}: {str(inner).splitlines()[0][:300]}" if str(inner) else type(inner).__name__
            return StorageError(self._scrub(f"{what} failed for {self.describe()}: cannot reach the endpoint "
                                            f"({why})"), retryable=True, code="connect")
        return self._common_error(what, cause)

    # -- one attempt each --------------------------------------------------------------
    async def _put(self, key: str, data: bytes, content_type: str) -> None:
        client = await self._oss()
        await client.put_object(oss.PutObjectRequest(bucket=self.config.bucket, key=key, body=data,
                                                     content_type=content_type))

    async def _parts_begin(self, key: str, content_type: str) -> str:
        client = await self._oss()
        res = await client.initiate_multipart_upload(oss.InitiateMultipartUploadRequest(
            bucket=self.config.bucket, key=key, content_type=content_type))
        return str(res.upload_id)

    async def _part(self, key: str, state: Any, number: int, offset: int, chunk: bytes, total: int) -> Any:
        client = await self._oss()
        res = await client.upload_part(oss.UploadPartRequest(bucket=self.config.bucket, key=key, upload_id=state,
                                                             part_number=number, body=chunk))
        return oss.UploadPart(part_number=number, etag=res.etag)

    async def _parts_end(self, key: str, state: Any, parts: list[Any], content_type: str) -> None:
        client = await self._oss()
        await client.complete_multipart_upload(oss.CompleteMultipartUploadRequest(
            bucket=self.config.bucket, key=key, upload_id=state,
            complete_multipart_upload=oss.CompleteMultipartUpload(parts=parts)))

    async def _parts_abort(self, key: str, state: Any) -> None:
        client = await self._oss()
        await client.abort_multipart_upload(oss.AbortMultipartUploadRequest(
            bucket=self.config.bucket, key=key, upload_id=state))

    async def _size(self, key: str) -> int | None:
        client = await self._oss()
        try:
            res = await client.head_object(oss.HeadObjectRequest(bucket=self.config.bucket, key=key))
        except oss.exceptions.OperationError as e:
            cause = e.unwrap()
            if isinstance(cause, oss.exceptions.ServiceError) and cause.status_code == 404:
                return None
            raise
        return int(res.content_length)

    async def _get(self, key: str) -> bytes:
        client = await self._oss()
        res = await client.get_object(oss.GetObjectRequest(bucket=self.config.bucket, key=key))
        return bytes(res.body.content)

    async def _remove(self, key: str) -> None:
        client = await self._oss()
        await client.delete_object(oss.DeleteObjectRequest(bucket=self.config.bucket, key=key))

    async def signed_url(self, key: str) -> str | None:
        """A V4 presigned GET URL."""
        client = await self._oss()
        res = await client.presign(oss.GetObjectRequest(bucket=self.config.bucket, key=key),
                                   expires=timedelta(seconds=PRESIGN_SECONDS))
        return str(res.url)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
