"""S3Storage: uploads to AWS S3 or any S3-compatible server (MinIO, ...) with aioboto3.

Retries, multipart and the preflight probe are RemoteStorage's (lkmedia.storage.remote),
so the Go egress keys (``max_retries``, ``min_retry_delay``, ``max_retry_delay``) mean what
they say and a multipart upload retries the part that failed. Messages name the bucket and
the endpoint; the secret and session token never appear (they are scrubbed from anything
the SDK says before it is raised).
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import Any
from urllib.parse import quote

import aioboto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

from ..redact import redact_key
from .base import StorageConfigError, StorageError, content_type_for
from .config import S3Config
from .remote import PRESIGN_SECONDS, S3_STYLE_FATAL, ProgressFn, RemoteStorage

log = logging.getLogger("lkmedia.storage.s3")

#: Error codes that no retry can fix: fail at once with a message that says why.
_FATAL = {
    **S3_STYLE_FATAL,
    "AllAccessDisabled": "all access to the bucket is disabled",
    "InvalidToken": "the session token is not valid",
    "ExpiredToken": "the session token has expired",
    "AuthorizationHeaderMalformed": "the region or credentials are malformed",
    "PermanentRedirect": "the bucket is in another region (set region or endpoint)",
    "InvalidTag": "the tagging is not valid",
}
_RETRYABLE_CODES = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable",
                    "XMinioServerNotInitialized", "OperationAborted", "RequestTimeTooSkewed"}


class S3Storage(RemoteStorage):
    """An S3 bucket. ``on_progress(key, bytes_done, total)`` is called after each part."""

    kind = "s3"

    def __init__(self, config: S3Config, *, prefix: str = "", on_progress: ProgressFn | None = None,
                 presign: bool = False) -> None:
        super().__init__(config, prefix=prefix, on_progress=on_progress, presign=presign)
        self.config: S3Config = config
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._lock = asyncio.Lock()

    # -- naming --------------------------------------------------------------------
    def describe(self) -> str:
        where = self.config.endpoint or "AWS"
        return f"S3 bucket {self.config.bucket!r} at {where}"

    def location(self, key: str) -> str:
        """LiveKit's location: https://bucket.endpoint/key, or endpoint/bucket/key with
        force_path_style (keeping the endpoint's scheme)."""
        path = quote(key.lstrip("/"), safe="/!$&'()*+,;=:@~")
        endpoint = self.config.endpoint or "s3.amazonaws.com"
        if self.config.force_path_style:
            if not endpoint.startswith(("http://", "https://")):
                endpoint = "https://" + endpoint
            return f"{endpoint.rstrip('/')}/{self.config.bucket}/{path}"
        host = endpoint.split("://", 1)[-1].rstrip("/")
        return f"https://{self.config.bucket}.{host}/{path}"

    def _secrets(self) -> tuple[str, ...]:
        return (self.config.secret, self.config.session_token, self.config.proxy_password)

    # -- client --------------------------------------------------------------------
    async def _get_client(self) -> Any:
        async with self._lock:
            if self._client is not None:
                return self._client
            c = self.config
            session = aioboto3.Session(
                aws_access_key_id=c.access_key or None,
                aws_secret_access_key=c.secret or None,
                aws_session_token=c.session_token or None,
                region_name=c.region or "us-east-1",
            )
            cfg = Config(
                retries={"total_max_attempts": 1, "mode": "standard"},  # one try: we retry ourselves
                connect_timeout=c.connect_timeout,
                read_timeout=c.read_timeout,
                s3={"addressing_style": "path" if c.force_path_style else "auto"},
                signature_version="s3v4",
                proxies=c.proxies() or None,
                # Plain Content-MD5/length uploads: every S3-compatible server takes them.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
            stack = contextlib.AsyncExitStack()
            self._client = await stack.enter_async_context(
                session.client("s3", endpoint_url=c.endpoint_url(), config=cfg))
            self._stack = stack
            return self._client

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    # -- errors --------------------------------------------------------------------
    def _error(self, what: str, e: BaseException) -> StorageError:
        """A StorageError naming the bucket, the cause and whether a retry may help."""
        if isinstance(e, StorageError):
            return e
        if isinstance(e, ClientError):
            err = e.response.get("Error", {})
            code = str(err.get("Code") or "")
            status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code in ("404", "NotFound") and what.startswith("preflight"):
                code = "NoSuchBucket"
            elif code == "403" and what.startswith("preflight"):
                code = "AccessDenied"
            reason = _FATAL.get(code) or str(err.get("Message") or code or f"HTTP {status}")
            if code == "InvalidAccessKeyId" and self.config.access_key:
                reason += f" (access key {redact_key(self.config.access_key)})"
            retryable = code not in _FATAL and (status >= 500 or status == 0 or code in _RETRYABLE_CODES)
            msg = f"{what} failed for {self.describe()}: {reason} ({code or status})"
            return StorageError(self._scrub(msg), retryable=retryable, code=code or str(status))
        if isinstance(e, NoCredentialsError):
            return StorageError(f"{what} failed for {self.describe()}: no credentials configured "
                                "(set access_key and secret)")
        if isinstance(e, EndpointConnectionError):
            return StorageError(f"{what} failed for {self.describe()}: cannot connect to the endpoint",
                                retryable=True, code="connect")
        if isinstance(e, BotoCoreError):
            return StorageError(self._scrub(f"{what} failed for {self.describe()}: {e}"), retryable=True)
        return self._common_error(what, e)

    # -- one attempt each ------------------------------------------------------------
    def _put_args(self, key: str, content_type: str | None) -> dict[str, Any]:
        c = self.config
        args: dict[str, Any] = {
            "Bucket": c.bucket, "Key": key,
            "ContentType": content_type or content_type_for(key),
            "ContentDisposition": c.content_disposition or "inline",
        }
        if c.metadata:
            args["Metadata"] = dict(c.metadata)
        if c.tagging:
            args["Tagging"] = c.tagging
        return args

    async def _put(self, key: str, data: bytes, content_type: str) -> None:
        client = await self._get_client()
        await client.put_object(Body=data, **self._put_args(key, content_type))

    async def _parts_begin(self, key: str, content_type: str) -> str:
        client = await self._get_client()
        created = await client.create_multipart_upload(**self._put_args(key, content_type))
        return str(created["UploadId"])

    async def _part(self, key: str, state: Any, number: int, offset: int, chunk: bytes, total: int) -> Any:
        client = await self._get_client()
        res = await client.upload_part(Bucket=self.config.bucket, Key=key, UploadId=state,
                                       PartNumber=number, Body=chunk)
        return {"ETag": res["ETag"], "PartNumber": number}

    async def _parts_end(self, key: str, state: Any, parts: list[Any], content_type: str) -> None:
        client = await self._get_client()
        await client.complete_multipart_upload(Bucket=self.config.bucket, Key=key, UploadId=state,
                                               MultipartUpload={"Parts": parts})

    async def _parts_abort(self, key: str, state: Any) -> None:
        client = await self._get_client()
        await client.abort_multipart_upload(Bucket=self.config.bucket, Key=key, UploadId=state)

    async def _size(self, key: str) -> int | None:
        client = await self._get_client()
        try:
            res = await client.head_object(Bucket=self.config.bucket, Key=key)
        except ClientError as e:
            if str(e.response.get("Error", {}).get("Code") or "") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return int(res["ContentLength"])

    async def _get(self, key: str) -> bytes:
        client = await self._get_client()
        res = await client.get_object(Bucket=self.config.bucket, Key=key)
        async with res["Body"] as body:
            return bytes(await body.read())

    async def _remove(self, key: str) -> None:
        client = await self._get_client()
        await client.delete_object(Bucket=self.config.bucket, Key=key)

    async def signed_url(self, key: str) -> str | None:
        client = await self._get_client()
        url = await client.generate_presigned_url(
            "get_object", Params={"Bucket": self.config.bucket, "Key": key}, ExpiresIn=PRESIGN_SECONDS)
        return str(url)

    async def list_keys(self, prefix: str = "") -> list[str]:
        client = await self._get_client()
        keys: list[str] = []
        token: str | None = None
        while True:
            args: dict[str, Any] = {"Bucket": self.config.bucket, "Prefix": prefix}
            if token:
                args["ContinuationToken"] = token
            res = await self._retry("listing", functools.partial(client.list_objects_v2, **args))
            keys += [o["Key"] for o in res.get("Contents", [])]
            token = res.get("NextContinuationToken")
            if not token:
                return keys


__all__ = ["S3Config", "S3Storage", "StorageConfigError"]
