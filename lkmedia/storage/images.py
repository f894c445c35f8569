"""ImageUploader: the ImageSink's ``on_image`` hook, which uploads each JPEG as it is written.

The hook runs on the sink's thread and only hands the file's name to the event loop
(``call_soon_threadsafe``): it never waits, so a slow or dead bucket never holds the
image sink up. On the loop one feeder task passes the images on to the Uploader, at most
``max_in_flight`` at a time, so the Uploader's bounded queue is never filled by images;
the rest wait as names (the JPEGs stay on disk) and go as slots free up. Each upload has
the Uploader's guarantees: retries, the backup once the primary failed, the local file
deleted only after the stored size is confirmed.

``finish()`` (after the sink has closed) waits for the uploads under way, then goes
through the sink's result: every image not stored yet whose file is still there is
uploaded now (one more try: primary or backup), and what still fails is reported with
where it is kept. With ``none_overwrite`` the same name is rewritten in place, so during
the egress each version is uploaded without deleting the local file (the sink may have
replaced it by the time the upload is confirmed); ``finish()`` uploads the last version
and deletes it.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..sinks.results import Image
from .uploader import Uploader, UploadResult

log = logging.getLogger("lkmedia.storage.images")


@dataclass
class ImagesUploaded:
    """What ``finish()`` came to: local path -> location of each image stored, failures
    (with where the file is kept), and how many were stored while the egress ran."""

    locations: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    stored: int = 0  # distinct images stored (primary or backup)
    stored_live: int = 0
    backup_storage_used: bool = False


class ImageUploader:
    """``ImageSink(directory, on_image=ImageUploader(uploader, root, overwrite=...))``.

    ``root``: the directory that storage names are relative to (the job's directory:
    ``<root>/up/img/shot_00001.jpeg`` is stored as ``up/img/shot_00001.jpeg``). Create it
    on the event loop."""

    def __init__(self, uploader: Uploader, root: str, *, overwrite: bool = False, max_in_flight: int = 2) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self.uploader = uploader
        self.root = os.path.abspath(root)
        self.overwrite = overwrite
        self.stored: dict[str, str] = {}  # storage name -> location, once an upload is confirmed
        self.backup_storage_used = False
        self.latency = _Latency()  # seconds from the hook to a confirmed upload
        self._loop = asyncio.get_running_loop()
        self._waiting: dict[str, tuple[str, float]] = {}  # name -> (local path, hook time), oldest first
        self._slots = asyncio.Semaphore(max_in_flight)
        self._in_flight: set[asyncio.Future[UploadResult]] = set()
        self._wake = asyncio.Event()
        self._closing = False
        uploader.start()
        self._feeder = asyncio.create_task(self._feed(), name=f"{uploader.name}-images")

    def storage_name(self, path: str) -> str:
        rel = os.path.relpath(os.path.abspath(path), self.root).replace(os.sep, "/")
        if rel == ".." or rel.startswith("../"):
            raise ValueError(f"image {path!r} is outside {self.root!r}")
        return rel

    # -- the hook (sink thread): never waits ----------------------------------------------
    def __call__(self, path: str, image: Image) -> None:
        self._loop.call_soon_threadsafe(self._offer, path, time.monotonic())

    def _offer(self, path: str, at: float) -> None:
        if self._closing:  # finish() has taken over: it uploads what is on disk
            return
        name = self.storage_name(path)
        self._waiting.pop(name, None)  # an overwritten image still waiting: its newest version, once
        self._waiting[name] = (path, at)
        self._wake.set()

    # -- the feeder (event loop) ----------------------------------------------------------
    async def _feed(self) -> None:
        while True:
            while not self._waiting:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
            await self._slots.acquire()
            name = next(iter(self._waiting))
            path, at = self._waiting.pop(name)
            try:
                fut = await self.uploader.submit(path, name, content_type="image/jpeg",
                                                 delete_local=not self.overwrite, coalesce=self.overwrite)
            except BaseException:
                self._slots.release()
                raise  # the file stays on disk: finish() uploads it
            self._in_flight.add(fut)
            fut.add_done_callback(functools.partial(self._done, name, at))

    def _done(self, name: str, at: float, fut: asyncio.Future[UploadResult]) -> None:
        self._in_flight.discard(fut)
        self._slots.release()
        if fut.cancelled() or fut.exception() is not None:
            return  # no result: finish() tries the file again
        res = fut.result()
        if res.stored:
            self.stored[name] = res.location
            self.backup_storage_used = self.backup_storage_used or res.backup_storage_used
            self.latency.add(time.monotonic() - at)

    # -- the end ----------------------------------------------------------------------------
    async def finish(self, images: list[Image], directory: str) -> ImagesUploaded:
        """After the sink closed: wait for the live uploads, then store (or report) every
        image of ``images`` (the sink's result, files in ``directory``) not stored yet."""
        self._closing = True
        self._wake.set()
        try:
            await self._feeder
        except Exception:
            log.exception("%s: the image feeder failed; the images left are uploaded now", self.uploader.name)
        if self._in_flight:
            await asyncio.wait(list(self._in_flight))
        out = ImagesUploaded(stored_live=len(self.stored))
        for filename in dict.fromkeys(i.filename for i in images):  # overwrite: once
            path = os.path.join(directory, filename)
            name = self.storage_name(path)
            if (self.overwrite or name not in self.stored) and os.path.exists(path):
                res = await self.uploader.upload_file(path, name, content_type="image/jpeg")
                if not res.stored:
                    out.failures.append(res.error or f"upload of {name} failed; kept at {res.location}")
                    continue
                self.stored[name] = res.location
                self.backup_storage_used = self.backup_storage_used or res.backup_storage_used
            if name not in self.stored:
                out.failures.append(f"{name}: not stored, and no local file left")
                continue
            out.stored += 1
            out.locations[path] = self.stored[name]
        out.backup_storage_used = self.backup_storage_used
        return out

    async def close(self) -> None:
        """Stop the feeder without waiting for the uploads (an aborted egress): the images
        not uploaded stay on disk."""
        self._closing = True
        if not self._feeder.done():
            self._feeder.cancel()
            try:
                await self._feeder
            except asyncio.CancelledError:
                pass

    def stats(self) -> dict[str, Any]:
        return {"stored": len(self.stored), "waiting": len(self._waiting), "in_flight": len(self._in_flight),
                **self.latency.summary()}


class _Latency:
    """Count, mean and max of the upload delays, and the last 256 for a median: bounded."""

    def __init__(self) -> None:
        self.count, self.total, self.max = 0, 0.0, 0.0
        self.recent: deque[float] = deque(maxlen=256)

    def add(self, s: float) -> None:
        self.count += 1
        self.total += s
        self.max = max(self.max, s)
        self.recent.append(s)

    def summary(self) -> dict[str, Any]:
        if not self.count:
            return {}
        r = sorted(self.recent)
        return {"upload_s_mean": round(self.total / self.count, 3), "upload_s_median": round(r[len(r) // 2], 3),
                "upload_s_max": round(self.max, 3)}
