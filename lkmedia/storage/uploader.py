"""Uploader: puts finished outputs into storage and never loses one.

The order for each file: the primary storage (with its retries), then the ``backup``
storage (``backup_storage_used``), and if both fail the local file stays where it is and
the result says so. A local file is deleted only when asked, and only after ``stat`` on
the storage shows an object of the uploaded size (LiveKit egress #329 deleted it after a
failed upload). Once the primary has failed and a backup exists, later uploads of the
same job go straight to the backup, as the Go egress does, so a dead bucket does not
hold every segment up for a full retry cycle.

``submit()`` / ``submit_threadsafe()`` feed one worker through a bounded queue (a full
queue makes the producer wait), so uploads keep their order (a segment before the
playlist that lists it); ``drain()`` waits for everything queued; ``close()`` drains and
stops the worker.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .base import Storage, StorageError, StoredObject, join_key

log = logging.getLogger("lkmedia.storage.uploader")


@dataclass
class UploadResult:
    """Where one output ended up. ``stored``: it is safe at ``location`` (the primary,
    or the backup when ``backup_storage_used``); otherwise ``location`` is the local
    file that was kept and ``error`` says why the uploads failed."""

    filename: str
    key: str
    location: str
    size: int
    stored: bool
    backup_storage_used: bool = False
    local_path: str | None = None  # the local file, while it still exists
    local_deleted: bool = False
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Job:
    path: str | None
    data: bytes | None
    filename: str
    content_type: str | None
    delete_local: bool
    future: asyncio.Future[UploadResult]
    coalesce: bool = False
    callbacks: list[Callable[[UploadResult], Any]] = field(default_factory=list)


class Uploader:
    """Uploads files and bytes to ``storage`` (None: files stay where they are) with a
    ``backup`` for failures. ``max_queue`` bounds the background queue."""

    def __init__(self, storage: Storage | None, *, backup: Storage | None = None,
                 delete_after_upload: bool = False, max_queue: int = 64, name: str = "uploader") -> None:
        if max_queue < 1:
            raise ValueError(f"{name}: max_queue must be at least 1, got {max_queue}")
        self.storage = storage
        self.backup = backup
        self.delete_after_upload = delete_after_upload
        self.name = name
        self.primary_failed = False
        self.backup_storage_used = False
        self.results: list[UploadResult] = []
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue(max_queue)
        self._pending: dict[str, _Job] = {}  # coalescible jobs not yet started, by filename
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # -- checks --------------------------------------------------------------------
    async def preflight(self, timeout: float = 5.0) -> None:
        """Fail now, not at the end of the recording, if the primary storage cannot be
        written. (A broken backup is logged: the primary may never need it.)"""
        if self.storage is not None:
            await asyncio.wait_for(self.storage.preflight(timeout), timeout + 1.0)
        if self.backup is not None:
            try:
                await asyncio.wait_for(self.backup.preflight(timeout), timeout + 1.0)
            except (StorageError, TimeoutError) as e:
                log.warning("%s: backup storage is not usable: %s", self.name, e)

    def key(self, filename: str) -> str:
        return self.storage.key(filename) if self.storage is not None else join_key("", filename)

    def location(self, filename: str) -> str:
        """Where ``filename`` is (or will be) stored on the primary."""
        return self.storage.location(self.key(filename)) if self.storage is not None else filename

    # -- direct uploads ---------------------------------------------------------------
    async def upload_file(self, path: str, filename: str | None = None, *, content_type: str | None = None,
                          delete_local: bool | None = None) -> UploadResult:
        """Upload ``path`` as ``filename`` (default: its base name) and return where it is."""
        filename = filename or os.path.basename(path)
        delete = self.delete_after_upload if delete_local is None else delete_local
        try:
            size = os.path.getsize(path)
        except OSError as e:
            res = UploadResult(filename, self.key(filename), path, 0, stored=False,
                               error=f"local file {path!r} is missing: {e.strerror or e}")
            return self._record(res)
        if self.storage is None:
            return self._record(UploadResult(filename, self.key(filename), os.path.abspath(path), size,
                                             stored=True, local_path=path))
        obj, is_backup, errors = await self._store(
            filename, lambda target: target.upload_file(path, target.key(filename), content_type))
        if obj is None:
            return self._record(self._kept(filename, path, size, errors))
        res = UploadResult(filename, obj.key, obj.location, obj.size, stored=True,
                           backup_storage_used=is_backup, local_path=path, error="; ".join(errors) or None)
        if delete:
            self._delete_local(res, path)
        return self._record(res)

    async def upload_bytes(self, data: bytes, filename: str, *, content_type: str | None = None) -> UploadResult:
        """Upload ``data`` (a manifest, a playlist) with the same primary/backup order."""
        if self.storage is None:
            return self._record(UploadResult(filename, self.key(filename), filename, len(data), stored=False,
                                             error="no storage configured"))
        obj, is_backup, errors = await self._store(
            filename, lambda target: target.upload_bytes(data, target.key(filename), content_type))
        if obj is None:
            return self._record(UploadResult(filename, self.key(filename), "", len(data), stored=False,
                                             error="; ".join(errors)))
        return self._record(UploadResult(filename, obj.key, obj.location, obj.size, stored=True,
                                         backup_storage_used=is_backup, error="; ".join(errors) or None))

    async def _store(self, filename: str, put: Callable[[Storage], Awaitable[StoredObject]]
                     ) -> tuple[StoredObject | None, bool, list[str]]:
        """Try the primary, then the backup; each upload is confirmed by its stored size.
        Returns the stored object (None if every target failed), whether it is the backup,
        and the errors met on the way."""
        errors: list[str] = []
        for target, is_backup in self._targets():
            try:
                obj = await put(target)
                await self._confirm(target, obj)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                errors.append(self._failed(target, is_backup, filename, e))
                continue
            return obj, is_backup, errors
        return None, False, errors

    async def upload_file_data_locally(self, data: bytes, path: str, filename: str) -> UploadResult:
        """No storage: write ``data`` to the local ``path`` (atomically) and report it there."""
        def write() -> None:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            tmp = f"{path}.part"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)

        try:
            await asyncio.to_thread(write)
        except OSError as e:
            return self._record(UploadResult(filename, filename, "", len(data), stored=False,
                                             error=f"cannot write {path!r}: {e.strerror or e}"))
        return self._record(UploadResult(filename, filename, os.path.abspath(path), len(data), stored=True,
                                         local_path=path))

    def _targets(self) -> list[tuple[Storage, bool]]:
        out: list[tuple[Storage, bool]] = []
        if self.storage is not None and not (self.primary_failed and self.backup is not None):
            out.append((self.storage, False))
        if self.backup is not None:
            out.append((self.backup, True))
        return out

    async def _confirm(self, target: Storage, obj: StoredObject) -> None:
        stored = await target.stat(obj.key)
        if stored != obj.size:
            raise StorageError(f"upload of {obj.key!r} to {target.describe()} not confirmed: stored size "
                               f"{stored if stored is not None else 'none'}, uploaded {obj.size} bytes")

    def _failed(self, target: Storage, is_backup: bool, filename: str, e: BaseException) -> str:
        msg = str(e) if isinstance(e, StorageError) else f"upload to {target.describe()} failed: {e!r}"
        if not isinstance(e, StorageError):
            log.exception("%s: unexpected error uploading %s", self.name, filename)
        if is_backup:
            log.error("%s: backup upload of %s failed: %s", self.name, filename, msg)
        else:
            log.warning("%s: upload of %s failed: %s", self.name, filename, msg)
            if self.backup is not None:
                self.primary_failed = True
        return ("backup: " if is_backup else "") + msg

    def _kept(self, filename: str, path: str, size: int, errors: list[str]) -> UploadResult:
        where = os.path.abspath(path)
        log.error("%s: %s was not uploaded; it is kept at %s", self.name, filename, where)
        return UploadResult(filename, self.key(filename), where, size, stored=False, local_path=path,
                            error="; ".join(errors) + f"; the file is kept at {where}")

    def _delete_local(self, res: UploadResult, path: str) -> None:
        try:
            if os.path.getsize(path) != res.size:
                log.warning("%s: %s changed after its upload; kept", self.name, path)
                return
            os.unlink(path)
        except OSError as e:
            log.warning("%s: could not delete %s after upload: %s", self.name, path, e)
            return
        res.local_deleted = True
        res.local_path = None

    def _record(self, res: UploadResult) -> UploadResult:
        if res.backup_storage_used:
            self.backup_storage_used = True
        self.results.append(res)
        return res

    # -- background queue -------------------------------------------------------------
    def start(self) -> None:
        if self._worker is None:
            self._loop = asyncio.get_running_loop()
            self._worker = asyncio.create_task(self._run(), name=f"{self.name}-worker")

    async def submit(self, path: str, filename: str | None = None, *, content_type: str | None = None,
                     delete_local: bool | None = None, coalesce: bool = False,
                     on_done: Callable[[UploadResult], Any] | None = None) -> asyncio.Future[UploadResult]:
        """Queue an upload (waits while the queue is full). ``coalesce``: if an upload of
        the same filename is still queued, that one (which reads the file when it runs)
        serves this request too: playlists rewritten after each segment."""
        if self._closed:
            raise RuntimeError(f"{self.name}: closed")
        self.start()
        filename = filename or os.path.basename(path)
        if coalesce and filename in self._pending:
            job = self._pending[filename]
            if on_done is not None:
                job.callbacks.append(on_done)
            return job.future
        fut: asyncio.Future[UploadResult] = asyncio.get_running_loop().create_future()
        job = _Job(path, None, filename, content_type,
                   self.delete_after_upload if delete_local is None else delete_local, fut, coalesce)
        if on_done is not None:
            job.callbacks.append(on_done)
        if coalesce:
            self._pending[filename] = job
        await self._queue.put(job)
        return fut

    def submit_threadsafe(self, path: str, filename: str | None = None, *, timeout: float | None = None,
                          **kw: Any) -> concurrent.futures.Future[UploadResult]:
        """``submit`` from another thread (a sink's): blocks while the queue is full, so
        a stalled upload slows the producer instead of growing memory."""
        loop = self._loop
        if loop is None:
            raise RuntimeError(f"{self.name}: start() the uploader on its event loop first")
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError(f"{self.name}: submit_threadsafe called on the event loop; await submit()")
        out: concurrent.futures.Future[UploadResult] = concurrent.futures.Future()

        async def enqueue() -> None:
            fut = await self.submit(path, filename, **kw)
            fut.add_done_callback(lambda f: _copy_result(f, out))

        asyncio.run_coroutine_threadsafe(enqueue(), loop).result(timeout)
        return out

    async def _run(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                if job is None:
                    return
                if job.coalesce:
                    self._pending.pop(job.filename, None)
                try:
                    assert job.path is not None
                    res = await self.upload_file(job.path, job.filename, content_type=job.content_type,
                                                 delete_local=job.delete_local)
                except Exception as e:  # upload_file reports failures; this is a bug guard
                    log.exception("%s: upload of %s crashed", self.name, job.filename)
                    if not job.future.done():
                        job.future.set_exception(e)
                    continue
                if not job.future.done():
                    job.future.set_result(res)
                for cb in job.callbacks:
                    try:
                        cb(res)
                    except Exception:
                        log.exception("%s: upload callback failed", self.name)
            finally:
                self._queue.task_done()

    async def drain(self) -> None:
        """Wait until everything queued so far is uploaded (or kept)."""
        if self._worker is not None:
            await self._queue.join()

    async def close(self) -> None:
        """Drain the queue, stop the worker, close the storages' clients."""
        if not self._closed:
            self._closed = True
            if self._worker is not None:
                await self._queue.put(None)
                await self._worker
                self._worker = None
        for s in (self.storage, self.backup):
            if s is not None:
                await s.close()

    async def __aenter__(self) -> Uploader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _copy_result(src: asyncio.Future[UploadResult], dst: concurrent.futures.Future[UploadResult]) -> None:
    if src.cancelled():
        dst.cancel()
    elif src.exception() is not None:
        dst.set_exception(src.exception())
    else:
        dst.set_result(src.result())
