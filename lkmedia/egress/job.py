"""One egress, from STARTING to COMPLETE / FAILED / ABORTED / LIMIT_REACHED.

The job subscribes (livekit.rtc sources), runs the recipe's graph, uploads what it wrote
and reports every status change through ``on_update`` (the service sends it to
livekit-server as IOInfo.UpdateEgress). Nothing it recorded is deleted before a
confirmed upload (lkmedia.storage.Uploader).
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from typing import Any

from livekit import api, rtc
from livekit.protocol import egress as lk

from ..core import GraphError
from ..sources.livekit import RoomSource, TrackSource
from ..storage.base import StorageConfigError
from ..storage.factory import StorageSettings, storage_for_request
from ..storage.manifest import Manifest
from ..storage.segments import SegmentUploader
from ..storage.uploader import Uploader
from .config import EgressConfig
from .errors import EgressError
from .info import fill_results
from .recipe import Recipe, build_recipe, filename_fields

log = logging.getLogger("lkmedia.egress")
S = lk.EgressStatus

UpdateFn = Callable[[lk.EgressInfo], Awaitable[None]]
#: How long a job waits for its participant or track to appear before failing.
SUBSCRIBE_TIMEOUT = 30.0


def egress_token(cfg: EgressConfig, api_key: str, api_secret: str) -> str:
    """A hidden recorder's join token, as the Go egress builds it (identity = egress ID)."""
    grants = api.VideoGrants(room_join=True, room=cfg.room_name, can_subscribe=True, can_publish=False,
                             hidden=True, recorder=True)
    return (api.AccessToken(api_key, api_secret).with_identity(cfg.egress_id).with_name("lkmedia egress")
            .with_grants(grants).with_kind("egress").to_jwt())


FIND_TRACK_WAIT = 5.0  # seconds a track egress looks for its track before failing
RECOVERY_FILE = "job.json"  # beside a running job's outputs: what a restarted worker needs
MEDIA_EXTENSIONS = (".mp4", ".ogg", ".webm", ".mp3", ".mkv", ".flv", ".ts", ".m3u8", ".jpeg", ".jpg")


class EgressJob:
    def __init__(self, cfg: EgressConfig, info: lk.EgressInfo, *, ws_url: str, api_key: str, api_secret: str,
                 tmp_dir: str, storage: StorageSettings | None, on_update: UpdateFn,
                 max_duration: float = 0.0) -> None:
        self.cfg, self.info = cfg, info
        self.ws_url, self.api_key, self.api_secret = ws_url, api_key, api_secret
        self.dir = os.path.join(tmp_dir, cfg.egress_id)
        self.storage_settings = storage
        self.on_update = on_update
        self.max_duration = max_duration
        self.recipe: Recipe | None = None
        self.source: Any = None
        self._stop = asyncio.Event()
        self._stop_reason = ""
        self._limit = False
        self._upload_failed = False  # an output reached no storage (kept locally)
        self._kill_error = ""  # set by kill(): the job ends FAILED with it, outputs finalised
        self.task: asyncio.Task[None] | None = None
        self.active_at: float | None = None
        self._manifest: Manifest | None = None
        self._live_hls: tuple[SegmentUploader, Uploader] | None = None  # segments uploaded as written

    # -- crash recovery ------------------------------------------------------------------
    def write_recovery(self, request: bytes, node_id: str) -> None:
        """Leave what a restarted worker needs to report this job if this process dies
        (SIGKILL, OOM): the request and the EgressInfo. Removed when the job ends."""
        os.makedirs(self.dir, exist_ok=True)
        body = {"request": base64.b64encode(request).decode(), "info": base64.b64encode(
            self.info.SerializeToString()).decode(), "pid": os.getpid(), "node_id": node_id}
        tmp = os.path.join(self.dir, RECOVERY_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(body, f)
        os.replace(tmp, os.path.join(self.dir, RECOVERY_FILE))

    def _drop_recovery(self) -> None:
        try:
            os.unlink(os.path.join(self.dir, RECOVERY_FILE))
        except FileNotFoundError:
            pass

    async def recover(self, cause: str = "the egress worker stopped unexpectedly (killed or crashed)"
                      ) -> lk.EgressInfo:
        """After the process that ran this job died: its outputs as they were written
        (fragmented MP4s play up to the last 0.5 s fragment), uploaded where the request
        said, and the egress FAILED with what was saved. Returns the final EgressInfo."""
        names = sorted(n for n in os.listdir(self.dir) if n.lower().endswith(MEDIA_EXTENSIONS))
        uploader: Uploader | None = None
        problems: list[str] = []
        try:
            uploader = await self._uploader()
        except EgressError as e:
            problems.append(str(e))
        now = time.time_ns()
        saved = []
        try:
            for name in names:
                path = os.path.join(self.dir, name)
                duration = _media_seconds(path)
                size = os.path.getsize(path)  # before the upload deletes the local copy
                location = path
                if uploader is not None:
                    r = await uploader.upload_file(path, name)
                    location = r.location
                    if not r.stored:
                        problems.append(r.error or f"upload of {name} failed; kept at {r.location}")
                if name.lower().endswith((".ts", ".m3u8", ".jpeg", ".jpg")):
                    continue  # HLS segments and images: uploaded, not file results
                self.info.file_results.append(lk.FileInfo(
                    filename=name, location=location, size=size,
                    duration=int(duration * 1e9), started_at=self.info.started_at, ended_at=now))
                saved.append(f"{name} ({duration:.1f} s)")
        finally:
            if uploader is not None:
                await uploader.close()
        self.info.status = S.EGRESS_FAILED
        self.info.error = (f"{cause}; "
                           + (f"partial output saved: {', '.join(saved)}" if saved else "no output was saved")
                           + ("; " + "; ".join(problems) if problems else ""))
        self.info.ended_at = self.info.updated_at = now
        self._drop_recovery()
        return self.info

    # -- control ---------------------------------------------------------------------
    def start(self) -> asyncio.Task[None]:
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"egress:{self.cfg.egress_id}")
        return self.task

    async def stop(self, reason: str = "StopEgress API") -> lk.EgressInfo:
        """Drain: ENDING now, COMPLETE once every output is finalised and uploaded."""
        if self.info.status in (S.EGRESS_STARTING, S.EGRESS_ACTIVE):
            self._stop_reason = reason
            if self.info.status == S.EGRESS_ACTIVE:
                await self._set(S.EGRESS_ENDING)
            self._stop.set()
        return self.info

    async def kill(self, error: str) -> lk.EgressInfo:
        """End FAILED with ``error`` (the supervisor's kill policy: memory, CPU), every
        output finalised and uploaded as on a stop: nothing recorded is lost."""
        if self.info.status in (S.EGRESS_STARTING, S.EGRESS_ACTIVE, S.EGRESS_ENDING):
            self._kill_error = error
            self._stop_reason = self._stop_reason or "killed"
            self._stop.set()
        return self.info

    def update_stream(self, add: list[str], remove: list[str]) -> lk.EgressInfo:
        if self.recipe is None or "stream" not in self.recipe.sinks:
            raise EgressError("UpdateStream called on non-streaming egress", "invalid_argument")
        sink = self.recipe.sinks["stream"]
        for u in add:
            sink.add_url(u)  # type: ignore[attr-defined]
        for u in remove:
            sink.remove_url(u)  # type: ignore[attr-defined]
        fill_results(self.info, self.recipe)
        return self.info

    # -- the job ---------------------------------------------------------------------
    async def _set(self, status: int, error: str = "") -> None:
        self.info.status = status  # type: ignore[assignment]
        self.info.updated_at = time.time_ns()
        if error:
            self.info.error = error
        if status in (S.EGRESS_COMPLETE, S.EGRESS_FAILED, S.EGRESS_ABORTED, S.EGRESS_LIMIT_REACHED):
            self.info.ended_at = self.info.updated_at
        try:
            await self.on_update(self.info)
        except Exception:  # reporting must never take the recording down
            log.exception("egress %s: status update failed", self.cfg.egress_id)

    async def _run(self) -> None:
        uploader: Uploader | None = None
        try:
            uploader = await self._uploader()
            self.recipe = await self._build()
            self._attach_live_hls(uploader)
            g = self.recipe.graph
            await g.start()
            await self._wait_active(g)
            limit = asyncio.ensure_future(asyncio.sleep(self.max_duration)) if self.max_duration > 0 else None
            stop = asyncio.ensure_future(self._stop.wait())
            done_graph = asyncio.ensure_future(g.wait())
            waiters = [x for x in (limit, stop, done_graph) if x is not None]
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if limit is not None and limit in done:
                self._limit = True
                await self._set(S.EGRESS_ENDING)
            for w in (limit, stop):
                if w is not None and not w.done():
                    w.cancel()
            try:
                errors = done_graph.result() if done_graph in done else await g.stop()
            finally:
                # stop() ends the graph, so this wait has its answer too: collect it.
                await asyncio.gather(done_graph, *(w for w in (limit, stop) if w is not None),
                                     return_exceptions=True)
            await self._finish(uploader, [str(e) for e in errors])
        except asyncio.CancelledError:
            await self._abort("egress aborted")
            raise
        except GraphError as e:
            await self._finish(uploader, [], fatal=str(e))
        except EgressError as e:
            await self._fail(str(e), uploader)
        except Exception as e:
            log.exception("egress %s failed", self.cfg.egress_id)
            await self._fail(f"{type(e).__name__}: {e}", uploader)
        finally:
            if uploader is not None:
                await uploader.close()
            self._drop_recovery()

    def _output(self, key: str) -> Any:
        """The output config for ``key``: "file", "segments" or "images<N>"."""
        if key.startswith("images"):
            i = int(key[6:] or 0)
            return self.cfg.images[i] if i < len(self.cfg.images) else None
        return getattr(self.cfg, key, None)

    def _upload_keys(self) -> list[str]:
        return [k for k in ("file", "segments", *(f"images{i}" for i in range(len(self.cfg.images))))
                if self._output(k) is not None]

    def _upload_storage(self, key: str) -> Any:
        """The storage a request gave output ``key`` ("file", "segments", "images<N>"): an
        S3Upload / ... message, or None for the server's ``storage:``."""
        return getattr(self._output(key), "storage", None)

    def _main_output(self) -> str | None:
        keys = self._upload_keys()
        return keys[0] if keys else None

    def _own_storage(self, key: str) -> bool:
        """Output ``key`` goes elsewhere than the main output: it needs its own uploader."""
        main = self._main_output()
        return key != main and self._upload_storage(key) != self._upload_storage(main or key)

    def _new_uploader(self, key: str) -> Uploader:
        try:
            storage = storage_for_request(self._upload_storage(key), self.storage_settings)
        except StorageConfigError as e:
            raise EgressError(str(e), "invalid_argument") from None
        return Uploader(storage, backup=self.storage_settings.backup if self.storage_settings else None,
                        delete_after_upload=storage is not None, name=f"{self.cfg.egress_id}-{key}-uploads")

    async def _uploader(self) -> Uploader | None:
        """The uploader of the file output (else of the segments). Each output has its own
        storage in LiveKit's API (the request's, else the server's): another output whose
        storage differs gets its own uploader in ``_upload``. Every storage is tried now,
        so a bad bucket or key fails the egress at start, not at the end."""
        main = self._main_output()
        if main is None:
            return None
        up = self._new_uploader(main)
        checks = [up]
        checks += [self._new_uploader(k) for k in self._upload_keys() if self._own_storage(k)]
        try:
            for u in checks:
                if u.storage is not None:
                    try:
                        await u.preflight()
                    except Exception as e:
                        where = u.storage.describe()
                        raise EgressError(str(e) or f"{where}: {type(e).__name__} in the test write",
                                          "invalid_argument") from None
        except BaseException:
            for u in checks:
                await u.close()
            raise
        for u in checks[1:]:
            await u.close()
        return up

    async def _build(self) -> Recipe:
        cfg = self.cfg
        token = egress_token(cfg, self.api_key, self.api_secret)
        track = None
        if cfg.request_type == "track":
            track = await self._find_track(cfg.track_id)
        fields = filename_fields(cfg, identity=track["identity"] if track else "", track=track)
        r = build_recipe(cfg, self.dir, live=True, fields=fields,
                         track_codec=track["codec"] if track else None, track_kind=track["kind"] if track else None)
        g = r.graph
        if cfg.request_type == "room_composite":
            src = RoomSource(self.ws_url, token, name="room")
            src.on_track(kind="audio", callback=self._mix_router(r))
            g.add(src)
        else:
            kw: dict[str, Any] = {"name": "tracks", "wait_timeout": SUBSCRIBE_TIMEOUT}
            if cfg.request_type == "participant":
                kw.update(participant_identity=cfg.identity, screen_share=cfg.screen_share)
            elif cfg.request_type == "track_composite":
                kw.update(audio_track_id=cfg.audio_track_id or None, video_track_id=cfg.video_track_id or None)
            else:
                kw.update(track_id=cfg.track_id, kind=track["kind"] if track else None)
            src = TrackSource(self.ws_url, token, **kw)
            if "video" in src.outputs and r.video_in is not None:
                g.link(src.out("video"), r.video_in)
            if "audio" in src.outputs and r.audio_in is not None:
                g.link(src.out("audio"), r.audio_in)
        self.source = src
        return r

    def _mix_router(self, r: Recipe) -> Any:
        """AudioMixing: DEFAULT mixes every track into both channels; DUAL_CHANNEL_AGENT puts
        agents on the left and everyone else on the right; DUAL_CHANNEL_ALTERNATE gives each
        new track the other channel (the Go egress's pkg/pipeline/builder/audio.go rules)."""
        mode = self.cfg.audio_mixing
        count = 0

        def link(src: Any, port: Any, info: Any) -> None:
            nonlocal count
            edge = src.graph.link(port, r.mixer)
            if mode == "dual_channel_agent":
                channel = "left" if info.participant_kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT else "right"
            elif mode == "dual_channel_alternate":
                channel = "left" if count % 2 == 0 else "right"
                count += 1
            else:
                channel = "both"
            r.mixer.set_channel(edge.dst, channel)  # type: ignore[union-attr]

        return link

    async def _find_track(self, track_id: str, wait: float = FIND_TRACK_WAIT) -> dict[str, str]:
        """The track's participant, kind and codec from the room service. A track published
        a moment ago is listed a little later (~0.5 s): look again for ``wait`` seconds."""
        http = self.ws_url.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
        deadline = time.monotonic() + wait
        async with api.LiveKitAPI(http, self.api_key, self.api_secret) as lkapi:
            while True:
                res = await lkapi.room.list_participants(api.ListParticipantsRequest(room=self.cfg.room_name))
                for p in res.participants:
                    for t in p.tracks:
                        if t.sid == track_id:
                            kind = "audio" if t.type == 0 else "video"
                            codec = (t.mime_type.split("/", 1)[-1] or ("opus" if kind == "audio" else "vp8")).lower()
                            return {"identity": p.identity, "kind": kind, "codec": codec, "track_id": t.sid,
                                    "track_type": kind, "track_source": api.TrackSource.Name(t.source).lower()}
                if time.monotonic() >= deadline or self._stop.is_set():
                    raise EgressError(f"track {track_id} not found in room {self.cfg.room_name!r}", "not_found")
                await asyncio.sleep(0.25)

    async def _wait_active(self, g: Any) -> None:
        """ACTIVE once media reaches the encoders (the Go egress: pipeline playing)."""
        while not (self._stop.is_set() or g.finished):
            if any(n.stats().get("frames_in") or n.stats().get("samples_in") for n in self.recipe.encoders.values()) \
                    or any(s.stats().get("packets") or s.stats().get("bytes_sent") for s in self.recipe.sinks.values()):
                self.active_at = time.time()
                await self._set(S.EGRESS_ACTIVE)
                return
            await asyncio.sleep(0.05)

    async def _finish(self, uploader: Uploader | None, errors: list[str], fatal: str = "") -> None:
        assert self.recipe is not None
        fatal = fatal or self._kill_error
        locations = await self._upload(uploader)
        fill_results(self.info, self.recipe, locations)
        if uploader is not None:
            self.info.backup_storage_used = uploader.backup_storage_used
        if fatal or (errors and not self._any_output()):
            await self._set(S.EGRESS_FAILED, fatal or "; ".join(errors))
        elif self._upload_failed:
            # As the Go egress: an output that reached no storage fails the egress. The
            # error says where each file is kept (nothing recorded is deleted).
            await self._set(S.EGRESS_FAILED, "; ".join([*errors, self.info.error]))
        elif self.info.status == S.EGRESS_STARTING and not self._stop_reason:
            await self._set(S.EGRESS_FAILED, "no media arrived")
        else:
            if errors:
                self.info.error = "; ".join(errors)
            if self._stop_reason:
                self.info.details = f"End reason: {self._stop_reason}"
            await self._set(S.EGRESS_LIMIT_REACHED if self._limit else S.EGRESS_COMPLETE)

    def _any_output(self) -> bool:
        assert self.recipe is not None
        return any(not s.failed for s in self.recipe.sinks.values())

    def _new_manifest(self) -> Manifest:
        cfg = self.cfg
        return Manifest(egress_id=cfg.egress_id, room_id=cfg.room_id, room_name=cfg.room_name,
                        started_at=self.info.started_at, publisher_identity=cfg.identity,
                        audio_track_id=cfg.audio_track_id, video_track_id=cfg.video_track_id, track_id=cfg.track_id)

    def _attach_live_hls(self, uploader: Uploader | None) -> None:
        """HLS to storage uploads each segment, and the playlists after it, as it is
        written (a live viewer reads them from the bucket), not at the end."""
        assert self.recipe is not None
        sink = self.recipe.sinks.get("segments")
        if sink is None or uploader is None:
            return
        up = self._new_uploader("segments") if self._own_storage("segments") else uploader
        if up.storage is None:  # local only: nothing to send
            return
        self._manifest = self._manifest or self._new_manifest()
        playlists = [os.path.relpath(p, self.dir) for p in (sink.playlist_path, sink.live_playlist_path) if p]
        seg = SegmentUploader(up, self.dir, playlists=playlists, manifest=self._manifest.add_playlist())
        sink.on_segment = seg
        self._live_hls = (seg, up)

    async def _upload(self, uploader: Uploader | None) -> dict[str, str]:
        """Upload file outputs and the HLS set, each to its output's storage; keep local
        copies unless confirmed; then the manifest beside the first stored output."""
        locations: dict[str, str] = {}
        if uploader is None or self.recipe is None:
            return locations
        cfg = self.cfg
        man = self._manifest = self._manifest or self._new_manifest()
        extra: dict[str, Uploader] = {}
        if self._live_hls is not None and self._live_hls[1] is not uploader:
            extra["segments"] = self._live_hls[1]
        first: tuple[str, Uploader] | None = None
        failures: list[str] = []
        manifest_wanted = False
        try:
            for key, sink in self.recipe.sinks.items():
                if key not in self._upload_keys():
                    continue
                up = uploader
                if self._own_storage(key):
                    up = extra.get(key) or extra.setdefault(key, self._new_uploader(key))
                res = sink.result or {}
                out = self._output(key)
                if key == "segments" and self._live_hls is not None:
                    manifest_wanted = manifest_wanted or not getattr(out, "disable_manifest", False)
                    summary = await self._live_hls[0].finish()
                    for name, loc in summary["playlist_locations"].items():
                        local = os.path.join(self.dir, name)
                        locations[local] = loc
                        if up.delete_after_upload:  # the final playlist is stored: no local copy
                            with contextlib.suppress(FileNotFoundError):
                                os.unlink(local)
                    failures += summary["errors"]
                    if summary["backup_storage_used"]:
                        up.backup_storage_used = True
                    stored = res.get("playlist_location")
                    if first is None and stored and os.path.join(self.dir, os.path.relpath(stored, self.dir)) \
                            in locations:
                        first = (os.path.relpath(stored, self.dir), up)
                    continue
                paths: list[str] = []
                playlist = None
                if key == "file" and res.get("location"):
                    paths = [res["location"]]
                elif key.startswith("images"):
                    names = dict.fromkeys(i["filename"] for i in res.get("images", []))  # overwrite: once
                    paths = [os.path.join(sink.directory, n) for n in names]  # type: ignore[attr-defined]
                elif key == "segments" and res.get("playlist_location"):
                    d = os.path.dirname(res["playlist_location"])
                    paths = [os.path.join(d, s["filename"]) for s in res.get("segments", [])]
                    paths += [p for p in (res.get("playlist_location"), res.get("live_playlist_location")) if p]
                    playlist = man.add_playlist()
                manifest_wanted = manifest_wanted or not getattr(out, "disable_manifest", False)
                for p in paths:
                    if not os.path.exists(p):
                        failures.append(f"{os.path.relpath(p, self.dir)}: not written")
                        continue
                    name = os.path.relpath(p, self.dir)
                    r = await up.upload_file(p, name)
                    locations[p] = r.location
                    if not r.stored:
                        failures.append(r.error or f"upload of {name} failed; kept at {r.location}")
                        continue
                    if key == "file":
                        man.add_file(name, r.location)
                    elif playlist is not None:
                        if p == res.get("playlist_location"):
                            playlist.update_location(r.location)
                        elif p != res.get("live_playlist_location"):
                            playlist.add_segment(name, r.location)
                    if first is None:
                        first = (name, up)
            for up in extra.values():
                if up.backup_storage_used:
                    uploader.backup_storage_used = True  # the job reports one flag
            # Written even with disable_manifest once the backup was used: it says what went where.
            if first is not None and (manifest_wanted or uploader.backup_storage_used):
                name, up = first
                m = await man.upload(up, name, ended_at=time.time_ns(), local_dir=self.dir)
                if m.stored:
                    self.info.manifest_location = m.location
                else:
                    failures.append(f"manifest upload failed ({m.error})")
        finally:
            for up in extra.values():
                await up.close()
        if failures:
            self.info.error = "; ".join(failures)
            self._upload_failed = True
            log.error("egress %s: %s", cfg.egress_id, self.info.error)
        return locations

    async def _fail(self, error: str, uploader: Uploader | None) -> None:
        if self.recipe is not None and self.recipe.graph.started:
            try:
                await self.recipe.graph.stop(timeout=10)
            except GraphError:
                pass
            try:
                fill_results(self.info, self.recipe, await self._upload(uploader))
            except Exception:
                log.exception("egress %s: could not save partial outputs", self.cfg.egress_id)
        await self._set(S.EGRESS_FAILED, error)

    async def _abort(self, reason: str) -> None:
        if self.recipe is not None and self.recipe.graph.started:
            await self.recipe.graph.cancel()
        await self._set(S.EGRESS_ABORTED, reason)

    def cleanup(self) -> None:
        """Remove the job's local directory once nothing in it is kept for later."""
        if os.path.isdir(self.dir) and not os.listdir(self.dir):
            shutil.rmtree(self.dir, ignore_errors=True)


def _media_seconds(path: str) -> float:
    """Duration of a (possibly unfinished) media file, from its packets."""
    import av

    try:
        with av.open(path) as c:
            if not c.streams:
                return 0.0
            s = c.streams.video[0] if c.streams.video else c.streams[0]
            first = last = None
            for pk in c.demux(s):
                if pk.pts is None:
                    continue
                t0 = float(pk.pts * pk.time_base)
                t1 = t0 + float((pk.duration or 0) * pk.time_base)
                first = t0 if first is None else min(first, t0)
                last = t1 if last is None else max(last, t1)
            return max(0.0, (last or 0.0) - (first or 0.0))
    except Exception:  # unreadable: reported with no duration
        return 0.0


def read_recovery(job_dir: str) -> dict[str, Any] | None:
    """A dead job's recovery record (request and EgressInfo bytes, pid), or None."""
    try:
        with open(os.path.join(job_dir, RECOVERY_FILE)) as f:
            body = json.load(f)
        return {"request": base64.b64decode(body["request"]), "info": base64.b64decode(body["info"]),
                "pid": int(body.get("pid", 0)), "node_id": body.get("node_id", "")}
    except (OSError, ValueError, KeyError):
        return None
