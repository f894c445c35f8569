"""LocalStorage: a directory as an upload target (no cloud storage, or the ``backup``).

Files are copied to a temporary name, synced and renamed, so a crash never leaves a
half-written file under the final name and ``stat`` sees only complete objects.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import Callable
from typing import Any, BinaryIO

from .base import Storage, StorageConfigError, StorageError, StoredObject, join_key


class LocalStorage(Storage):
    kind = "local"

    def __init__(self, directory: str | os.PathLike[str], prefix: str = "",
                 probe_dir: str | None = None) -> None:
        """``probe_dir``: where ``preflight`` checks that files can be written (default:
        ``directory``; a deeper one when only part of the tree is meant to be written)."""
        if not str(directory):
            raise StorageConfigError("local storage needs a directory")
        self.directory = os.path.abspath(os.fspath(directory))
        self.prefix = prefix
        self.probe_dir = os.path.abspath(probe_dir) if probe_dir else self.directory

    def describe(self) -> str:
        return f"local directory {self.directory!r}"

    def _path(self, key: str) -> str:
        key = join_key("", key)
        path = os.path.normpath(os.path.join(self.directory, key))
        if os.path.commonpath([path, self.directory]) != self.directory:
            raise StorageConfigError(f"key {key!r} leaves {self.describe()}")
        return path

    def location(self, key: str) -> str:
        return self._path(key)

    def _store(self, write: Callable[[BinaryIO], Any], key: str) -> StoredObject:
        dst = self._path(key)
        tmp = f"{dst}.{uuid.uuid4().hex[:8]}.part"
        try:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dst)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise StorageError(f"cannot write {key!r} to {self.describe()}: {e.strerror or e}") from e
        return StoredObject(key, dst, os.path.getsize(dst))

    async def upload_file(self, path: str, key: str, content_type: str | None = None) -> StoredObject:
        def copy(f: BinaryIO) -> None:
            with open(path, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 20)

        if not os.path.isfile(path):
            raise StorageError(f"local file {path!r} does not exist")
        return await asyncio.to_thread(self._store, copy, key)

    async def upload_bytes(self, data: bytes, key: str, content_type: str | None = None) -> StoredObject:
        return await asyncio.to_thread(self._store, lambda f: f.write(data), key)

    async def stat(self, key: str) -> int | None:
        try:
            return os.path.getsize(self._path(key))
        except OSError:
            return None

    async def download(self, key: str) -> bytes:
        def read() -> bytes:
            with open(self._path(key), "rb") as f:
                return f.read()

        return await asyncio.to_thread(read)

    async def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass

    async def preflight(self, timeout: float = 5.0) -> None:
        def probe() -> None:
            try:
                os.makedirs(self.probe_dir, exist_ok=True)
                name = os.path.join(self.probe_dir, f".lkmedia-preflight-{uuid.uuid4().hex[:8]}")
                with open(name, "wb") as f:
                    f.write(b"ok")
                os.unlink(name)
            except OSError as e:
                raise StorageError(f"local directory {self.probe_dir!r} is not writable: {e.strerror or e}") from e

        await asyncio.wait_for(asyncio.to_thread(probe), timeout)
