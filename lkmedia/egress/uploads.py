"""Where an egress's files go, and getting them there without losing one.

Each output has its own storage in LiveKit's API: the request's, else the server's
``storage:``. An output the request names by an absolute path (``/out/{room_name}.mp4``)
with no storage goes to that path on this machine, as the Go egress writes it. Anything
else stays in the job's directory. Outputs are recorded locally in the job's directory
and moved to their storage as they finish (HLS segments and images as they are
written), never deleted before the storage confirmed them (lkmedia.storage.Uploader);
the manifest goes beside the first stored output.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from ..sinks.results import FileResult, ImagesResult, SegmentsResult
from ..storage.base import Storage, StorageConfigError
from ..storage.factory import StorageSettings, storage_for_request
from ..storage.images import ImageUploader
from ..storage.local import LocalStorage
from ..storage.manifest import Manifest
from ..storage.segments import SegmentUploader
from ..storage.uploader import Uploader
from .config import EgressConfig
from .errors import EgressError
from .recipe import Output, Recipe

log = logging.getLogger("lkmedia.egress.uploads")
UPLOADED = ("file", "segments", "images")


@dataclass
class Finished:
    """What the uploads came to: local path -> location, and what went wrong."""
    locations: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    manifest_location: str = ""
    backup_storage_used: bool = False


class Uploads:
    def __init__(self, cfg: EgressConfig, job_dir: str, settings: StorageSettings, started_at: int) -> None:
        self.cfg, self.dir, self.settings = cfg, job_dir, settings
        self._uploaders: dict[tuple[bytes, bool], Uploader] = {}
        self.manifest = Manifest(egress_id=cfg.egress_id, room_id=cfg.room_id, room_name=cfg.room_name,
                                 started_at=started_at, publisher_identity=cfg.identity,
                                 audio_track_id=cfg.audio_track_id, video_track_id=cfg.video_track_id,
                                 track_id=cfg.track_id)
        self._live: tuple[SegmentUploader, Uploader] | None = None
        self._images: dict[int, ImageUploader] = {}  # id(sink) -> its live uploads

    # -- targets -------------------------------------------------------------------------
    def _configs(self) -> list[Any]:
        c = self.cfg
        return [x for x in (c.file, c.segments, *c.images) if x is not None]

    @staticmethod
    def _key(conf: Any) -> tuple[bytes, bool]:
        st = conf.storage
        return (st.SerializeToString(deterministic=True) if st is not None else b"", bool(conf.absolute))

    def _storage(self, conf: Any) -> Storage | None:
        try:
            storage = storage_for_request(conf.storage, self.settings)
        except StorageConfigError as e:
            raise EgressError(str(e), "invalid_argument") from None
        if storage is None and conf.absolute:  # the path the request named, on this machine
            path = conf.filepath if hasattr(conf, "filepath") else conf.filename_prefix
            static = os.path.dirname("/" + path.split("{", 1)[0] + "x")
            return LocalStorage("/", probe_dir=static)
        return storage

    def uploader(self, conf: Any) -> Uploader | None:
        """The uploader of an output's storage (one with no storage keeps the files in the
        job directory); None before ``open``."""
        return self._uploaders.get(self._key(conf))

    async def open(self) -> None:
        """Every storage the outputs use, each tried now: a bad bucket or key fails the
        egress at its start, not at its end."""
        try:
            for conf in self._configs():
                key = self._key(conf)
                if key in self._uploaders:
                    continue
                storage = self._storage(conf)
                up = Uploader(storage, backup=self.settings.backup, delete_after_upload=storage is not None,
                              name=f"{self.cfg.egress_id}-uploads{len(self._uploaders)}")
                self._uploaders[key] = up
                if storage is None:
                    continue
                try:
                    await up.preflight()
                except Exception as e:
                    raise EgressError(str(e) or f"{storage.describe()}: {type(e).__name__} in the test write",
                                      "invalid_argument") from None
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        images, self._images = list(self._images.values()), {}
        for img in images:
            await img.close()
        ups, self._uploaders = list(self._uploaders.values()), {}
        for up in ups:
            await up.close()

    def attach_live(self, recipe: Recipe) -> None:
        """HLS to storage uploads each segment, and the playlists after it, as it is
        written (a live viewer reads them from the bucket), not at the end; so does an
        image output each JPEG."""
        for img in recipe.outputs:
            iup = self.uploader(img.config) if img.kind == "images" else None
            if iup is not None and iup.storage is not None:
                isink: Any = img.sink
                isink.on_image = self._images[id(isink)] = ImageUploader(
                    iup, self.dir, overwrite=isink.suffix == "none_overwrite")
        out = recipe.output("segments")
        up = self.uploader(out.config) if out is not None else None
        if out is None or up is None or up.storage is None:  # local only: nothing to send
            return
        sink: Any = out.sink
        playlists = [os.path.relpath(p, self.dir) for p in (sink.playlist_path, sink.live_playlist_path) if p]
        seg = SegmentUploader(up, self.dir, playlists=playlists, manifest=self.manifest.add_playlist())
        sink.on_segment = seg
        self._live = (seg, up)

    # -- the end -------------------------------------------------------------------------
    async def finish(self, recipe: Recipe) -> Finished:
        """Upload every output to its storage; then the manifest beside the first stored one."""
        done = Finished()
        first: tuple[str, Uploader] | None = None
        manifest_wanted = False
        for out in recipe.outputs:
            up = self.uploader(out.config) if out.kind in UPLOADED else None
            if up is None:
                continue
            manifest_wanted = manifest_wanted or not out.config.disable_manifest
            stored = await self._finish_output(out, up, done)
            first = first or stored
        done.backup_storage_used = any(up.backup_storage_used for up in self._uploaders.values())
        # Written even with disable_manifest once the backup was used: it says what went where.
        if first is not None and (manifest_wanted or done.backup_storage_used):
            name, up = first
            m = await self.manifest.upload(up, name, ended_at=time.time_ns(), local_dir=self.dir)
            if m.stored:
                done.manifest_location = m.location
            else:
                done.failures.append(f"manifest upload failed ({m.error})")
        if done.failures:
            log.error("egress %s: %s", self.cfg.egress_id, "; ".join(done.failures))
        return done

    async def _finish_output(self, out: Output, up: Uploader, done: Finished) -> tuple[str, Uploader] | None:
        """Upload one output's files; the first stored name (for the manifest), if any."""
        res = out.sink.result
        if out.kind == "segments" and self._live is not None:
            return await self._finish_live(res, up, done)
        if out.kind == "images" and id(out.sink) in self._images:
            return await self._finish_images(out, up, done)
        first = None
        playlist = self.manifest.add_playlist() if isinstance(res, SegmentsResult) else None
        for path in self._paths(out):
            if not os.path.exists(path):
                done.failures.append(f"{os.path.relpath(path, self.dir)}: not written")
                continue
            name = os.path.relpath(path, self.dir)
            r = await up.upload_file(path, name)
            done.locations[path] = r.location
            if not r.stored:
                done.failures.append(r.error or f"upload of {name} failed; kept at {r.location}")
                continue
            if isinstance(res, FileResult):
                self.manifest.add_file(name, r.location)
            elif isinstance(res, ImagesResult):
                self._manifest_images(out.sink, {path: r.location})
            elif playlist is not None and isinstance(res, SegmentsResult):
                if path == res.playlist_location:
                    playlist.update_location(r.location)
                elif path != res.live_playlist_location:
                    playlist.add_segment(name, r.location)
            first = first or (name, up)
        return first

    async def _finish_live(self, res: SegmentsResult | None, up: Uploader, done: Finished
                           ) -> tuple[str, Uploader] | None:
        assert self._live is not None
        summary = await self._live[0].finish()
        for name, loc in summary["playlist_locations"].items():
            local = os.path.join(self.dir, name)
            done.locations[local] = loc
            if up.delete_after_upload:  # the final playlist is stored: no local copy
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(local)
        done.failures += summary["errors"]
        if summary["backup_storage_used"]:
            up.backup_storage_used = True
        if res is not None and res.playlist_location in done.locations:
            return os.path.relpath(res.playlist_location, self.dir), up
        return None

    async def _finish_images(self, out: Output, up: Uploader, done: Finished) -> tuple[str, Uploader] | None:
        sink: Any = out.sink
        img = self._images[id(sink)]
        summary = await img.finish(sink.result.images, sink.directory)
        log.info("egress %s: %s: %d images stored (%d while it ran) %s", self.cfg.egress_id, sink.name,
                 summary.stored, summary.stored_live, img.stats())
        done.locations.update(summary.locations)
        done.failures += summary.failures
        if summary.backup_storage_used:
            up.backup_storage_used = True
        self._manifest_images(sink, summary.locations)
        first = next(iter(summary.locations), None)
        return (os.path.relpath(first, self.dir), up) if first is not None else None

    def _manifest_images(self, sink: Any, locations: dict[str, str]) -> None:
        """The stored images in the manifest, each with its time (an overwritten file: its last)."""
        last = {i.filename: i.timestamp for i in sink.result.images}
        for name, ts in last.items():
            loc = locations.get(os.path.join(sink.directory, name))
            if loc:
                self.manifest.add_image(os.path.relpath(os.path.join(sink.directory, name), self.dir), ts, loc)

    def _paths(self, out: Output) -> list[str]:
        res = out.sink.result
        if isinstance(res, FileResult):
            return [res.location]
        if isinstance(res, ImagesResult):
            names = dict.fromkeys(i.filename for i in res.images)  # overwrite: once
            return [os.path.join(out.sink.directory, n) for n in names]  # type: ignore[attr-defined]
        if isinstance(res, SegmentsResult):
            d = os.path.dirname(res.playlist_location)
            paths = [os.path.join(d, s.filename) for s in res.segments]
            return paths + [p for p in (res.playlist_location, res.live_playlist_location) if p]
        return []

    # -- recovery --------------------------------------------------------------------------
    def main_uploader(self) -> Uploader | None:
        """The first output's uploader: a dead job's files, found by name, go there."""
        confs = self._configs()
        return self.uploader(confs[0]) if confs else None
