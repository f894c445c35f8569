"""ImageUploader (the ImageSink's on_image hook) against local storages that can be held
up or made to fail: the sink never waits on a stalled storage and at most
``max_in_flight`` images are queued; a JPEG is deleted only once stored; failures go to
the backup, or stay on disk and are uploaded (or reported) by ``finish()``; overwritten
images end as their last version."""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from lkmedia.core import Graph
from lkmedia.sinks.images import ImageSink
from lkmedia.sinks.results import Image
from lkmedia.sources.synthetic import SyntheticSource
from lkmedia.storage.base import StorageError, StoredObject
from lkmedia.storage.images import ImageUploader
from lkmedia.storage.local import LocalStorage
from lkmedia.storage.uploader import Uploader


class GatedStorage(LocalStorage):
    """A local directory whose uploads wait for ``gate`` and fail while ``down``."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.gate = asyncio.Event()
        self.gate.set()
        self.down = False
        self.calls = 0
        self.concurrent = self.max_concurrent = 0

    async def upload_file(self, path: str, key: str, content_type: str | None = None) -> StoredObject:
        self.calls += 1
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            await self.gate.wait()
            if self.down:
                raise StorageError(f"{self.describe()} is down", retryable=True)
            return await super().upload_file(path, key, content_type)
        finally:
            self.concurrent -= 1


def stored_files(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*.jpeg"))


async def run_sink(job: Path, hook: ImageUploader, seconds: float, **kw: Any) -> ImageSink:
    g = Graph()
    sink = ImageSink(str(job / "img"), filename_prefix="shot", capture_interval=0.5, width=160, on_image=hook, **kw)
    g.link(SyntheticSource(width=320, height=180, duration=seconds, audio=False), sink)
    assert await g.run() == []
    return sink


async def test_images_go_while_the_sink_runs_and_are_deleted_once_stored(tmp_path: Path) -> None:
    store = GatedStorage(tmp_path / "bucket")
    async with Uploader(store, delete_after_upload=True, max_queue=4) as up:
        hook = ImageUploader(up, str(tmp_path / "job"))
        g = Graph()
        sink = ImageSink(str(tmp_path / "job" / "img"), filename_prefix="shot", capture_interval=0.5,
                         width=160, on_image=hook)
        g.link(SyntheticSource(width=320, height=180, duration=3.0, audio=False, live=True), sink)
        assert await g.run() == []
        live = len(hook.stored)
        res = await hook.finish(sink.result.images, sink.directory)
    n = sink.result.image_count
    assert n == 6 and live >= n - 1, (n, live)  # uploaded as they were written, not at the end
    assert res.stored == n and res.stored_live == live and not res.failures and not res.backup_storage_used
    names = [f"img/shot_{i:05d}.jpeg" for i in range(n)]
    assert stored_files(tmp_path / "bucket") == names
    assert sorted(res.locations.values()) == [str(tmp_path / "bucket" / x) for x in names]
    assert not list((tmp_path / "job").rglob("*.jpeg"))
    assert hook.latency.count == live and hook.latency.max < 1.0


async def test_a_stalled_storage_never_holds_the_sink_and_the_queue_stays_bounded(tmp_path: Path) -> None:
    store = GatedStorage(tmp_path / "bucket")
    store.gate.clear()  # every upload hangs until the gate opens
    async with Uploader(store, delete_after_upload=True, max_queue=4) as up:
        hook = ImageUploader(up, str(tmp_path / "job"), max_in_flight=2)
        t0 = time.monotonic()
        sink = await run_sink(tmp_path / "job", hook, 20.0)  # 40 images, as fast as the encoder goes
        took = time.monotonic() - t0
        await asyncio.sleep(0.1)
        n = sink.result.image_count
        assert n == 40 and took < 10.0, (n, took)
        # two handed to the Uploader (one uploading, one queued), the rest wait as names on disk
        assert up._queue.qsize() <= 2 and store.calls == 1 and hook.stats()["in_flight"] == 2
        assert hook.stats()["waiting"] == n - 2 and len(list((tmp_path / "job").rglob("*.jpeg"))) == n
        store.gate.set()
        res = await hook.finish(sink.result.images, sink.directory)
    assert res.stored == n and not res.failures
    assert len(stored_files(tmp_path / "bucket")) == n and not list((tmp_path / "job").rglob("*.jpeg"))
    assert store.max_concurrent == 1


async def test_primary_down_goes_to_the_backup(tmp_path: Path) -> None:
    store = GatedStorage(tmp_path / "bucket")
    backup = LocalStorage(tmp_path / "backup")
    async with Uploader(store, backup=backup, delete_after_upload=True) as up:
        hook = ImageUploader(up, str(tmp_path / "job"))
        store.down = True
        sink = await run_sink(tmp_path / "job", hook, 2.0)
        res = await hook.finish(sink.result.images, sink.directory)
    assert res.stored == sink.result.image_count == 4 and res.backup_storage_used and not res.failures
    assert stored_files(tmp_path / "backup") == [f"img/shot_{i:05d}.jpeg" for i in range(4)]
    assert not stored_files(tmp_path / "bucket") and not list((tmp_path / "job").rglob("*.jpeg"))
    assert all(loc.startswith(str(tmp_path / "backup")) for loc in res.locations.values())


async def test_what_failed_while_it_ran_is_uploaded_or_reported_at_the_end(tmp_path: Path) -> None:
    store = GatedStorage(tmp_path / "bucket")
    async with Uploader(store, delete_after_upload=True) as up:  # no backup
        hook = ImageUploader(up, str(tmp_path / "job"))
        store.down = True
        sink = await run_sink(tmp_path / "job", hook, 2.0)
        await asyncio.sleep(0.1)
        assert len(list((tmp_path / "job").rglob("*.jpeg"))) == 4  # failed: kept
        # one is lost locally before the end: reported, not silently dropped
        os.unlink(tmp_path / "job" / "img" / "shot_00002.jpeg")
        store.down = False  # back: the end uploads the others
        res = await hook.finish(sink.result.images, sink.directory)
    assert res.stored == 3 and res.stored_live == 0
    assert res.failures == ["img/shot_00002.jpeg: not stored, and no local file left"]
    assert stored_files(tmp_path / "bucket") == [f"img/shot_{i:05d}.jpeg" for i in (0, 1, 3)]

    store.down = True  # and with the storage still down at the end: kept, with where
    async with Uploader(store, delete_after_upload=True) as up:
        hook = ImageUploader(up, str(tmp_path / "job2"))
        sink = await run_sink(tmp_path / "job2", hook, 1.0)
        res = await hook.finish(sink.result.images, sink.directory)
    assert res.stored == 0 and len(res.failures) == 2
    assert "is down" in res.failures[0] and str(tmp_path / "job2" / "img" / "shot_00000.jpeg") in res.failures[0]
    assert len(list((tmp_path / "job2").rglob("*.jpeg"))) == 2


async def test_overwrite_uploads_each_version_and_ends_with_the_last(tmp_path: Path) -> None:
    store = GatedStorage(tmp_path / "bucket")
    async with Uploader(store, delete_after_upload=True) as up:
        hook = ImageUploader(up, str(tmp_path / "job"), overwrite=True)
        sink = await run_sink(tmp_path / "job", hook, 2.0, suffix="none_overwrite")
        local = (tmp_path / "job" / "img" / "shot.jpeg").read_bytes()
        res = await hook.finish(sink.result.images, sink.directory)
    assert sink.result.image_count == 4 and res.stored == 1 and not res.failures
    assert (tmp_path / "bucket" / "img" / "shot.jpeg").read_bytes() == local
    assert not (tmp_path / "job" / "img" / "shot.jpeg").exists()
    assert store.calls >= 2  # versions went while it ran, the last at the end


async def test_the_hook_returns_at_once_from_another_thread(tmp_path: Path) -> None:
    store = GatedStorage(tmp_path / "bucket")
    store.gate.clear()
    (tmp_path / "job").mkdir()
    async with Uploader(store, delete_after_upload=True, max_queue=1) as up:
        hook = ImageUploader(up, str(tmp_path / "job"), max_in_flight=1)
        paths = [tmp_path / "job" / f"i{i}.jpeg" for i in range(50)]
        for p in paths:
            p.write_bytes(b"jpeg")

        def produce() -> float:
            t0 = time.monotonic()
            for p in paths:
                hook(str(p), Image(p.name, time.time()))
            return time.monotonic() - t0

        took = await asyncio.to_thread(produce)
        assert took < 0.5, took
        store.gate.set()
        res = await hook.finish([Image(p.name, 0.0) for p in paths], str(tmp_path / "job"))
    assert res.stored == 50 and len(stored_files(tmp_path / "bucket")) == 50
