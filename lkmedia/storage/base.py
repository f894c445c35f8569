"""The storage contract every upload target follows, its results and its errors.

A Storage puts bytes at a key and tells where they landed (``location``, the URL or path
LiveKit reports in EgressInfo), how big the stored object is (``stat``) so that nothing
is deleted before an upload is confirmed, and whether it can be written at all
(``preflight``), so a bad bucket or key fails an egress at its start, not its end.
"""
from __future__ import annotations

import mimetypes
import os
import posixpath
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Self

from ..core.errors import LkmediaError

_CONTENT_TYPES = {
    ".mp4": "video/mp4",
    ".m4a": "audio/mp4",
    ".ogg": "audio/ogg",
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
    ".mp3": "audio/mpeg",
    ".ivf": "video/x-ivf",
    ".ts": "video/MP2T",
    ".m3u8": "application/x-mpegurl",
    ".json": "application/json",
    ".jpeg": "image/jpeg",
    ".jpg": "image/jpeg",
    ".flv": "video/x-flv",
}


class StorageError(LkmediaError):
    """An upload, stat or preflight failed. The message names the target (bucket,
    endpoint, directory) and never a secret. ``retryable`` says whether trying again
    later could help (a network error or 5xx) or not (no such bucket, bad key)."""

    def __init__(self, message: str, *, retryable: bool = False, code: str | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.code = code  # the server's error code (S3: "NoSuchBucket", "404", ...)


class StorageConfigError(StorageError, ValueError):
    """A storage configuration that cannot work (missing bucket, unsupported provider)."""


@dataclass(frozen=True)
class StoredObject:
    """What one successful upload produced."""

    key: str
    location: str
    size: int


@dataclass(frozen=True)
class RetryPolicy:
    """The Go egress's S3 retry keys: ``max_retries`` (5), ``min_retry_delay`` (100 ms),
    ``max_retry_delay`` (5 s). Delays double from the minimum up to the maximum, each
    with up to half of it as jitter, so a pause of known length is bridged predictably."""

    max_retries: int = 5
    min_delay: float = 0.1
    max_delay: float = 5.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise StorageConfigError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.min_delay < 0 or self.max_delay < self.min_delay:
            raise StorageConfigError(
                f"retry delays must satisfy 0 <= min_retry_delay <= max_retry_delay, "
                f"got {self.min_delay:g} s and {self.max_delay:g} s")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        cap = min(self.max_delay, self.min_delay * (2 ** (attempt - 1)))
        return random.uniform(cap / 2, cap)

    def total(self) -> float:
        """Longest time all retries may wait (for tests and timeouts)."""
        return sum(min(self.max_delay, self.min_delay * (2 ** i)) for i in range(self.max_retries))


def join_key(prefix: str, filename: str) -> str:
    """LiveKit's storage path: ``storage.prefix`` joined to the output filename."""
    key = posixpath.join(prefix or "", filename.lstrip("/")) if prefix else filename
    key = key.lstrip("/")
    parts = key.split("/")
    if not key or ".." in parts:
        raise StorageConfigError(f"storage key must be a relative path without '..', got {key!r}")
    return key


def content_type_for(name: str) -> str:
    ext = os.path.splitext(name)[1].lower()
    return _CONTENT_TYPES.get(ext) or mimetypes.guess_type(name)[0] or "application/octet-stream"


class Storage(ABC):
    """Where outputs go. Coroutines run on one event loop; ``close()`` releases clients."""

    #: "s3", "local", ... (EgressInfo and logs)
    kind: str = "storage"
    #: LiveKit's ``storage.prefix``: joined before every filename stored here.
    prefix: str = ""

    def key(self, filename: str) -> str:
        """The object key for an output ``filename`` (prefix + filename, as LiveKit does)."""
        return join_key(self.prefix, filename)

    @abstractmethod
    def describe(self) -> str:
        """A short name for messages: bucket and endpoint, or the directory. No secrets."""

    @abstractmethod
    def location(self, key: str) -> str:
        """Where ``key`` is reported to live (URL or absolute path)."""

    @abstractmethod
    async def upload_file(self, path: str, key: str, content_type: str | None = None) -> StoredObject:
        """Store the file at ``path`` under ``key`` (retrying as configured)."""

    @abstractmethod
    async def upload_bytes(self, data: bytes, key: str, content_type: str | None = None) -> StoredObject:
        """Store ``data`` under ``key`` (manifests, playlists)."""

    @abstractmethod
    async def stat(self, key: str) -> int | None:
        """Size of the stored object, or None when there is none."""

    @abstractmethod
    async def preflight(self, timeout: float = 5.0) -> None:
        """Prove the target is writable within ``timeout`` seconds, or raise StorageError."""

    async def download(self, key: str) -> bytes:
        """Read an object back (tests, tools)."""
        raise NotImplementedError(f"{self.kind} storage cannot download")

    async def delete(self, key: str) -> None:
        raise NotImplementedError(f"{self.kind} storage cannot delete")

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
