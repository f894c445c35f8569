"""S3Storage: uploads to AWS S3 or any S3-compatible server (MinIO, ...) with aioboto3.

Retries are ours, not botocore's, so that the Go egress keys (``max_retries``,
``min_retry_delay``, ``max_retry_delay``) mean what they say and a multipart upload
retries the part that failed instead of starting over. Messages name the bucket and the
endpoint; the secret and session token never appear (they are scrubbed from anything the
SDK says before it is raised).
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

import aioboto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

from ..redact import redact_key
from .base import Storage, StorageConfigError, StorageError, StoredObject, content_type_for
from .config import S3Config

log = logging.getLogger("lkmedia.storage.s3")

T = TypeVar("T")

#: Error codes that no retry can fix: fail at once with a message that says why.
_FATAL = {
    "NoSuchBucket": "the bucket does not exist",
    "InvalidBucketName": "the bucket name is not valid",
    "InvalidAccessKeyId": "the access key is not known to the server",
    "SignatureDoesNotMatch": "the secret does not match the access key",
    "AccessDenied": "access denied (the credentials may not write to this bucket)",
    "AllAccessDisabled": "all access to the bucket is disabled",
    "InvalidToken": "the session token is not valid",
    "ExpiredToken": "the session token has expired",
    "AuthorizationHeaderMalformed": "the region or credentials are malformed",
    "PermanentRedirect": "the bucket is in another region (set region or endpoint)",
    "InvalidArgument": "the server refused an argument",
    "InvalidTag": "the tagging is not valid",
    "EntityTooLarge": "the object is too large",
}
_RETRYABLE_CODES = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable",
                    "XMinioServerNotInitialized", "OperationAborted", "RequestTimeTooSkewed"}

ProgressFn = Callable[[str, int, int], Any]


class S3Storage(Storage):
    """An S3 bucket. ``on_progress(key, bytes_done, total)`` is called after each part."""

    kind = "s3"

    def __init__(self, config: S3Config, *, prefix: str = "", on_progress: ProgressFn | None = None) -> None:
        config.validate()
        self.config = config
        self.prefix = prefix
        self.on_progress = on_progress
        self.policy = config.retry_policy()
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

    def _scrub(self, text: str) -> str:
        for secret in (self.config.secret, self.config.session_token, self.config.proxy_password):
            if len(secret) >= 4:  # shorter ones would garble every message and are no secret
                text = text.replace(secret, "***")
        return text

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
        if isinstance(e, TimeoutError):
            return StorageError(f"{what} failed for {self.describe()}: no answer in time", retryable=True)
        if isinstance(e, BotoCoreError | OSError) or type(e).__module__.startswith("aiohttp"):
            return StorageError(self._scrub(f"{what} failed for {self.describe()}: {e}"), retryable=True)
        return StorageError(self._scrub(f"{what} failed for {self.describe()}: {type(e).__name__}: {e}"))

    async def _retry(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op`` with the retry policy; raises the last StorageError."""
        attempt = 0
        while True:
            try:
                return await op()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # classified below; never lose the cause
                err = self._error(what, e)
                if not err.retryable or attempt >= self.policy.max_retries:
                    if attempt:
                        err = StorageError(f"{err} (after {attempt + 1} attempts)", retryable=err.retryable,
                                           code=err.code)
                    raise err from None
                attempt += 1
                delay = self.policy.delay(attempt)
                log.warning("%s; retry %d/%d in %.2f s", err, attempt, self.policy.max_retries, delay)
                await asyncio.sleep(delay)

    # -- uploads -------------------------------------------------------------------
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

    async def upload_bytes(self, data: bytes, key: str, content_type: str | None = None) -> StoredObject:
        client = await self._get_client()
        args = self._put_args(key, content_type)
        await self._retry(f"upload of {key!r}", lambda: client.put_object(Body=data, **args))
        self._progress(key, len(data), len(data))
        return StoredObject(key, self.location(key), len(data))

    async def upload_file(self, path: str, key: str, content_type: str | None = None) -> StoredObject:
        try:
            size = os.path.getsize(path)
        except OSError as e:
            raise StorageError(f"cannot read local file {path!r}: {e.strerror or e}") from e
        if size <= self.config.multipart_threshold:
            data = await asyncio.to_thread(_read_all, path)
            return await self.upload_bytes(data, key, content_type)
        return await self._multipart(path, size, key, content_type)

    async def _multipart(self, path: str, size: int, key: str, content_type: str | None) -> StoredObject:
        client = await self._get_client()
        what = f"upload of {key!r}"
        created = await self._retry(what, lambda: client.create_multipart_upload(**self._put_args(key, content_type)))
        upload_id = created["UploadId"]
        part_size = self.config.part_size
        parts: list[dict[str, Any]] = []
        try:
            with open(path, "rb") as f:
                fd = f.fileno()
                offset, number = 0, 1
                while offset < size:
                    n = min(part_size, size - offset)
                    chunk = await asyncio.to_thread(os.pread, fd, n, offset)
                    if len(chunk) != n:
                        raise StorageError(f"local file {path!r} shrank while uploading")

                    def put(chunk: bytes = chunk, number: int = number) -> Awaitable[Any]:
                        return client.upload_part(Bucket=self.config.bucket, Key=key, UploadId=upload_id,
                                                  PartNumber=number, Body=chunk)

                    res = await self._retry(f"{what} (part {number})", put)
                    parts.append({"ETag": res["ETag"], "PartNumber": number})
                    offset += n
                    number += 1
                    self._progress(key, offset, size)
            await self._retry(what, lambda: client.complete_multipart_upload(
                Bucket=self.config.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}))
        except BaseException:
            # Best effort: an unreachable server keeps the parts until its lifecycle rules
            # clean them; the local file is what matters and the caller keeps it.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.abort_multipart_upload(
                    Bucket=self.config.bucket, Key=key, UploadId=upload_id), 2.0)
            raise
        return StoredObject(key, self.location(key), size)

    def _progress(self, key: str, done: int, total: int) -> None:
        if self.on_progress is not None:
            try:
                self.on_progress(key, done, total)
            except Exception:
                log.exception("upload progress callback failed")

    # -- reads ---------------------------------------------------------------------
    async def stat(self, key: str) -> int | None:
        client = await self._get_client()
        try:
            res = await self._retry(f"stat of {key!r}", lambda: client.head_object(Bucket=self.config.bucket, Key=key))
        except StorageError as e:
            if e.code in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return int(res["ContentLength"])

    async def download(self, key: str) -> bytes:
        client = await self._get_client()

        async def get() -> bytes:
            res = await client.get_object(Bucket=self.config.bucket, Key=key)
            async with res["Body"] as body:
                return bytes(await body.read())

        return await self._retry(f"download of {key!r}", get)

    async def delete(self, key: str) -> None:
        client = await self._get_client()
        await self._retry(f"delete of {key!r}", lambda: client.delete_object(Bucket=self.config.bucket, Key=key))

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

    # -- preflight -----------------------------------------------------------------
    async def preflight(self, timeout: float = 5.0) -> None:
        """Write and delete a tiny probe object under the prefix: proves the bucket
        exists and these credentials may write to it, without waiting for retries.
        A delete that is refused is fine (write-only credentials)."""
        client = await self._get_client()
        key = self.key(f".lkmedia-preflight-{uuid.uuid4().hex[:12]}")
        try:
            await asyncio.wait_for(client.put_object(
                Bucket=self.config.bucket, Key=key, Body=b"lkmedia preflight", ContentType="text/plain"), timeout)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            raise self._error("preflight (test write)", e) from None
        try:
            await asyncio.wait_for(client.delete_object(Bucket=self.config.bucket, Key=key), timeout)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("%s", self._error(f"preflight (removing probe {key!r})", e))


def _read_all(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


__all__ = ["S3Config", "S3Storage", "StorageConfigError"]
