"""SegmentUploader: the ``on_segment`` hook that uploads HLS segments as they finish.

HLSSink calls the hook on its own thread after each segment is closed and the playlists
are rewritten. The hook hands the segment, then each playlist, to the Uploader's bounded
queue on the event loop (blocking the sink while the queue is full, so a slow bucket
slows the recording down instead of filling memory). Playlists are coalesced: one still
waiting in the queue is uploaded once, with the newest text. ``finish()`` uploads the
final playlists (with ENDLIST) and waits for everything.
"""
from __future__ import annotations

import asyncio
import os
import posixpath
import threading
from typing import Any

from .manifest import ManifestPlaylist
from .uploader import Uploader, UploadResult


class SegmentUploader:
    """``HLSSink(directory, on_segment=SegmentUploader(uploader, directory, ...))``.

    ``playlists``: playlist file names in ``directory`` to re-upload after each segment.
    ``storage_dir``: the storage directory for this output (LiveKit's StorageDir: the
    directory part of the playlist's storage path). Create it on the event loop.
    """

    def __init__(self, uploader: Uploader, directory: str, *, playlists: list[str] | tuple[str, ...] = (),
                 storage_dir: str = "", manifest: ManifestPlaylist | None = None,
                 delete_segments: bool | None = None, timeout: float | None = None) -> None:
        self.uploader = uploader
        self.directory = os.path.abspath(directory)
        self.playlists = list(playlists)
        self.storage_dir = storage_dir.strip("/")
        self.manifest = manifest
        self.delete_segments = uploader.delete_after_upload if delete_segments is None else delete_segments
        self.timeout = timeout
        self.segments: list[UploadResult] = []
        self.playlist_results: dict[str, UploadResult] = {}
        self._lock = threading.Lock()
        uploader.start()  # needs the running loop: the sink thread hands over to it

    def storage_name(self, path: str) -> str:
        rel = os.path.relpath(os.path.join(self.directory, path), self.directory).replace(os.sep, "/")
        if rel.startswith("../"):
            raise ValueError(f"segment {path!r} is outside the HLS directory {self.directory!r}")
        return posixpath.join(self.storage_dir, rel) if self.storage_dir else rel

    # -- the hook (sink thread) -------------------------------------------------------
    def __call__(self, path: str, duration: float) -> None:
        self.uploader.submit_threadsafe(path, self.storage_name(path), timeout=self.timeout,
                                        delete_local=self.delete_segments, content_type="video/MP2T",
                                        on_done=self._segment_done)
        for name in self.playlists:
            self._submit_playlist_threadsafe(name)

    def _submit_playlist_threadsafe(self, name: str) -> None:
        self.uploader.submit_threadsafe(os.path.join(self.directory, name), self.storage_name(name),
                                        timeout=self.timeout, delete_local=False, coalesce=True,
                                        content_type="application/x-mpegurl", on_done=self._playlist_done)

    # -- results (event loop) ---------------------------------------------------------
    def _segment_done(self, res: UploadResult) -> None:
        with self._lock:
            self.segments.append(res)
        if self.manifest is not None and res.stored:
            self.manifest.add_segment(res.filename, res.location)  # storage path without prefix, as Go

    def _playlist_done(self, res: UploadResult) -> None:
        with self._lock:
            self.playlist_results[res.filename] = res
        if self.manifest is not None and res.stored and self.playlists and \
                res.filename == self.storage_name(self.playlists[0]):
            self.manifest.update_location(res.location)

    async def finish(self) -> dict[str, Any]:
        """After the sink closed: upload the final playlists, wait for all uploads and
        return a summary (counts, sizes, what was kept locally)."""
        futs: list[asyncio.Future[UploadResult]] = []
        for name in self.playlists:
            path = os.path.join(self.directory, name)
            if os.path.exists(path):
                futs.append(await self.uploader.submit(path, self.storage_name(name), delete_local=False,
                                                       coalesce=True, content_type="application/x-mpegurl",
                                                       on_done=self._playlist_done))
        await self.uploader.drain()
        if futs:
            await asyncio.gather(*futs)
        return self.summary()

    def summary(self) -> dict[str, Any]:
        with self._lock:
            segs = list(self.segments)
            pls = dict(self.playlist_results)
        return {
            "segment_count": len(segs),
            "size": sum(s.size for s in segs),
            "segments_stored": sum(1 for s in segs if s.stored),
            "kept_locally": [s.local_path for s in segs if not s.stored and s.local_path],
            "backup_storage_used": any(s.backup_storage_used for s in [*segs, *pls.values()]),
            "playlist_locations": {k: v.location for k, v in pls.items() if v.stored},
            "errors": [s.error for s in [*segs, *pls.values()] if s.error and not s.stored],
        }
