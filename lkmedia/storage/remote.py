"""RemoteStorage: what every cloud target (S3, GCS, Azure Blob, Alibaba OSS) does the same way.

* Retries are ours, not the SDK's, so that the Go egress keys (``max_retries``,
  ``min_retry_delay``, ``max_retry_delay``) mean the same for every provider and a large
  upload retries the part that failed instead of starting over.
* A file above ``multipart_threshold`` goes in ``part_size`` parts (S3 and OSS multipart,
  Azure blocks, GCS resumable chunks), read one at a time from disk.
* ``preflight`` writes and removes a tiny probe object without retrying, so a bad bucket
  or key fails an egress at its start, within seconds.
* Every message a provider's SDK produces is scrubbed of the configured secrets before it
  is raised or logged.

A provider implements ``_error`` (an SDK exception -> StorageError, with ``retryable``),
the single-shot operations (``_put``, ``_size``, ``_get``, ``_remove``) and the three
steps of a large upload (``_parts_begin``, ``_part``, ``_parts_end``, ``_parts_abort``).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from .base import RetryPolicy, Storage, StorageError, StoredObject, content_type_for

log = logging.getLogger("lkmedia.storage")

T = TypeVar("T")

#: Error codes of S3 and of the services that copy its API (OSS) that no retry can fix,
#: and what they mean.
S3_STYLE_FATAL = {
    "NoSuchBucket": "the bucket does not exist",
    "InvalidBucketName": "the bucket name is not valid",
    "InvalidAccessKeyId": "the access key is not known to the server",
    "SignatureDoesNotMatch": "the secret does not match the access key",
    "AccessDenied": "access denied (the credentials may not write to this bucket)",
    "InvalidArgument": "the server refused an argument",
    "EntityTooLarge": "the object is too large",
}
ProgressFn = Callable[[str, int, int], Any]
#: StorageError.code of a part whose upload session the server no longer knows (a GCS
#: resumable session that expired): the upload starts again, once.
RESTART = "restart-upload"
#: How long a signed URL (``generate_presigned_url``) stays valid: 7 days, the longest
#: that S3 and GCS V4 signatures allow.
PRESIGN_SECONDS = 7 * 24 * 3600


class RemoteStorage(Storage):
    """``on_progress(key, bytes_done, total)`` is called after each part (and after a
    single-shot upload)."""

    def __init__(self, config: Any, *, prefix: str = "", on_progress: ProgressFn | None = None,
                 presign: bool = False) -> None:
        """``config``: the provider's settings (S3Config, GCPConfig, ...), validated here;
        its retry keys and part sizes are used."""
        config.validate()
        self.config = config
        self.policy: RetryPolicy = config.retry_policy()
        self.part_size: int = config.part_size
        self.multipart_threshold: int = config.multipart_threshold
        self.prefix = prefix
        self.on_progress = on_progress
        self.presign = presign  # generate_presigned_url: results carry signed URLs

    # -- secrets ---------------------------------------------------------------------
    def _secrets(self) -> Sequence[str]:
        """Values that must never appear in a message (keys, tokens, passwords)."""
        return ()

    def _scrub(self, text: str) -> str:
        for secret in self._secrets():
            if len(secret) >= 4:  # shorter ones would garble every message and are no secret
                text = text.replace(secret, "***")
        return text

    # -- errors and retries -------------------------------------------------------------
    @abstractmethod
    def _error(self, what: str, e: BaseException) -> StorageError:
        """A StorageError naming the target and the cause, and whether a retry may help."""

    def _common_error(self, what: str, e: BaseException) -> StorageError:
        """Failures that look the same with every SDK: timeouts and socket errors."""
        if isinstance(e, StorageError):
            return e
        if isinstance(e, TimeoutError):
            return StorageError(f"{what} failed for {self.describe()}: no answer in time", retryable=True)
        if isinstance(e, OSError) or type(e).__module__.startswith("aiohttp"):
            return StorageError(self._scrub(f"{what} failed for {self.describe()}: {e}"), retryable=True,
                                code="connect")
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

    # -- provider operations (one attempt each) ---------------------------------------
    @abstractmethod
    async def _put(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key`` in one request."""

    @abstractmethod
    async def _size(self, key: str) -> int | None:
        """The stored object's size, None when there is none (a 404 is no error)."""

    @abstractmethod
    async def _get(self, key: str) -> bytes: ...

    @abstractmethod
    async def _remove(self, key: str) -> None: ...

    @abstractmethod
    async def _parts_begin(self, key: str, content_type: str) -> Any:
        """Start a large upload; returns its state (an upload id, a session URL...)."""

    @abstractmethod
    async def _part(self, key: str, state: Any, number: int, offset: int, chunk: bytes, total: int) -> Any:
        """Store part ``number`` (1-based) at ``offset``; returns what ``_parts_end`` needs of it."""

    @abstractmethod
    async def _parts_end(self, key: str, state: Any, parts: list[Any], content_type: str) -> None: ...

    async def _parts_abort(self, key: str, state: Any) -> None:
        """Best effort: forget the parts stored so far."""
        return None

    async def signed_url(self, key: str) -> str | None:
        """A time-limited URL that reads ``key`` (None: this target has none)."""
        return None

    # -- the Storage contract --------------------------------------------------------------
    async def upload_bytes(self, data: bytes, key: str, content_type: str | None = None) -> StoredObject:
        ctype = content_type or content_type_for(key)
        await self._retry(f"upload of {key!r}", lambda: self._put(key, data, ctype))
        self._progress(key, len(data), len(data))
        return StoredObject(key, await self.result_location(key), len(data))

    async def upload_file(self, path: str, key: str, content_type: str | None = None) -> StoredObject:
        try:
            size = os.path.getsize(path)
        except OSError as e:
            raise StorageError(f"cannot read local file {path!r}: {e.strerror or e}") from e
        if size <= self.multipart_threshold:
            data = await asyncio.to_thread(_read_all, path)
            return await self.upload_bytes(data, key, content_type)
        return await self._upload_parts(path, size, key, content_type or content_type_for(key))

    async def _upload_parts(self, path: str, size: int, key: str, content_type: str) -> StoredObject:
        try:
            return await self._upload_parts_once(path, size, key, content_type)
        except StorageError as e:
            if e.code != RESTART:
                raise
            log.warning("%s; starting the upload of %r again", e, key)
        return await self._upload_parts_once(path, size, key, content_type)

    async def _upload_parts_once(self, path: str, size: int, key: str, content_type: str) -> StoredObject:
        what = f"upload of {key!r}"
        state = await self._retry(what, lambda: self._parts_begin(key, content_type))
        parts: list[Any] = []
        try:
            with open(path, "rb") as f:
                fd = f.fileno()
                offset, number = 0, 1
                while offset < size:
                    n = min(self.part_size, size - offset)
                    chunk = await asyncio.to_thread(os.pread, fd, n, offset)
                    if len(chunk) != n:
                        raise StorageError(f"local file {path!r} shrank while uploading")

                    def put(chunk: bytes = chunk, number: int = number, offset: int = offset) -> Awaitable[Any]:
                        return self._part(key, state, number, offset, chunk, size)

                    parts.append(await self._retry(f"{what} (part {number})", put))
                    offset += n
                    number += 1
                    self._progress(key, offset, size)
            await self._retry(what, lambda: self._parts_end(key, state, parts, content_type))
        except BaseException:
            # An unreachable server keeps the parts until its lifecycle rules clean them;
            # the local file is what matters and the caller keeps it.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._parts_abort(key, state), 2.0)
            raise
        return StoredObject(key, await self.result_location(key), size)

    async def result_location(self, key: str) -> str:
        """What EgressInfo reports: the plain location, or a signed URL when asked for."""
        if self.presign:
            url = await self.signed_url(key)
            if url:
                return url
        return self.location(key)

    def _progress(self, key: str, done: int, total: int) -> None:
        if self.on_progress is not None:
            try:
                self.on_progress(key, done, total)
            except Exception:
                log.exception("upload progress callback failed")

    async def stat(self, key: str) -> int | None:
        return await self._retry(f"stat of {key!r}", lambda: self._size(key))

    async def download(self, key: str) -> bytes:
        return await self._retry(f"download of {key!r}", lambda: self._get(key))

    async def delete(self, key: str) -> None:
        await self._retry(f"delete of {key!r}", lambda: self._remove(key))

    async def preflight(self, timeout: float = 5.0) -> None:
        """Write and delete a tiny probe object under the prefix: proves the bucket
        exists and these credentials may write to it, without waiting for retries.
        A delete that is refused is fine (write-only credentials)."""
        key = self.key(f".lkmedia-preflight-{uuid.uuid4().hex[:12]}")
        try:
            await asyncio.wait_for(self._put(key, b"lkmedia preflight", "text/plain"), timeout)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            raise self._preflight_error(e) from None
        try:
            await asyncio.wait_for(self._remove(key), timeout)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("%s", self._error(f"preflight (removing probe {key!r})", e))

    def _preflight_error(self, e: BaseException) -> StorageError:
        return self._error("preflight (test write)", e)


def _read_all(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
