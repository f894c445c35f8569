"""One egress in its job process, from STARTING to COMPLETE / FAILED / ABORTED / LIMIT_REACHED.

The job owns its EgressInfo: it subscribes (livekit.rtc sources), runs the recipe's graph,
uploads what it wrote (lkmedia.egress.uploads) and reports every status through
``report`` (the worker relays it to livekit-server). It is given a validated spec
(lkmedia.egress.spec.EgressLaunch) and never validates the request again.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from livekit import api, rtc
from livekit.protocol import egress as lk

from ..chrome.session import ChromeSession
from ..core import GraphError, LkmediaError
from ..nodes.decode import Decoder
from ..sources.livekit import RoomSource, TrackSource
from ..sources.livekit_encoded import VIDEO_CODECS, EncodedTrackSource
from ..sources.screen import ScreenSource
from ..storage.factory import settings_from_yaml
from ..worker.kind import Report
from .errors import EgressError
from .info import FINAL, fill_results, set_status
from .lookup import RoomLookup
from .recipe import Recipe, build_recipe, filename_fields, participant_passthrough, published_video
from .spec import EgressLaunch
from .tiles import TileDirector
from .uploads import Uploads
from .web import open_page

log = logging.getLogger("lkmedia.egress")
S = lk.EgressStatus

#: How long a job waits for its participant or tracks to appear before failing (Go's
#: subscriptionTimeout).
SUBSCRIBE_TIMEOUT = 30.0
FIND_TRACK_WAIT = 5.0  # seconds a track egress looks for its track before failing
VIDEO_LISTED_WAIT = 2.0  # seconds a participant egress waits for its participant's video to be listed
END_SOURCE_CLOSED = "Source closed"  # (the Go egress's end reason when its participant or room went away)
REJOIN_GRACE = 5.0  # seconds a participant egress waits for tracks that went away (as TrackSource)


def egress_token(egress_id: str, room_name: str, api_key: str, api_secret: str) -> str:
    """A hidden recorder's join token, as the Go egress builds it (identity = egress ID)."""
    grants = api.VideoGrants(room_join=True, room=room_name, can_subscribe=True, can_publish=False,
                             hidden=True, recorder=True)
    return (api.AccessToken(api_key, api_secret).with_identity(egress_id).with_name("lkmedia egress")
            .with_grants(grants).with_kind("egress").to_jwt())


def error_text(e: BaseException) -> str:
    """An exception as the sentence EgressInfo.error shows (never a bare exception name)."""
    text = str(e).strip()
    if isinstance(e, LkmediaError | OSError | ValueError) and text:
        return text
    return f"internal error ({type(e).__name__}{': ' + text if text else ''})"


class EgressJob:
    """A lkmedia.worker.kind.Job for one egress."""

    def __init__(self, launch: EgressLaunch, info: lk.EgressInfo, report: Report) -> None:
        self.launch, self.info, self.report = launch, info, report
        self.cfg = launch.spec.config
        self.dir = os.path.join(launch.tmp_dir, self.cfg.egress_id)
        self.uploads = Uploads(self.cfg, self.dir, settings_from_yaml(launch.storage), info.started_at)
        self.recipe: Recipe | None = None
        self.source: Any = None
        self._track_codec = ""
        self._stop = asyncio.Event()
        self._stop_reason = ""
        self._source_closed = asyncio.Event()  # the participant or track followed has gone for good
        self._limit = False
        self._kill_error = ""  # set by kill(): the job ends FAILED with it, outputs finalised
        self.active_at: float | None = None
        self.director: TileDirector | None = None  # room composite: who is on screen, where
        self.chrome: ChromeSession | None = None  # the Chrome engine: the job's page
        self._page_watch: asyncio.Task[None] | None = None

    # -- control (lkmedia.worker.kind.Job) ---------------------------------------------------
    async def stop(self, reason: str = "StopEgress API") -> None:
        """Drain: ENDING now, COMPLETE once every output is finalised and uploaded."""
        if self.info.status in (S.EGRESS_STARTING, S.EGRESS_ACTIVE):
            self._stop_reason = reason
            if self.info.status == S.EGRESS_ACTIVE:
                await self._set(S.EGRESS_ENDING)
            self._stop.set()

    async def kill(self, error: str) -> None:
        """End FAILED with ``error`` (the worker's kill policy: memory, CPU), every output
        finalised and uploaded as on a stop: nothing recorded is lost."""
        if self.info.status not in FINAL:
            self._kill_error = error
            self._stop_reason = self._stop_reason or "killed"
            self._stop.set()

    async def request(self, op: str, args: dict[str, Any]) -> None:
        if op != "update_stream":
            raise EgressError(f"unknown request {op!r}", "invalid_argument")
        out = self.recipe.output("stream") if self.recipe is not None else None
        if out is None:
            raise EgressError("UpdateStream called on non-streaming egress", "invalid_argument")
        sink: Any = out.sink
        try:
            for u in args.get("add", []):
                sink.add_url(u)
            for u in args.get("remove", []):
                sink.remove_url(u)
        except ValueError as e:
            raise EgressError(str(e), "invalid_argument") from None
        fill_results(self.info, self.recipe.results() if self.recipe else [])
        await self.report(self.info)

    async def _set(self, status: int, error: str = "") -> None:
        set_status(self.info, status, error)
        try:
            await self.report(self.info)
        except Exception:  # reporting must never take the recording down
            log.exception("egress %s: status update failed", self.cfg.egress_id)

    # -- the job ------------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            await self.uploads.open()
            self.recipe = await self._build()
            if self._stop.is_set() and not self._kill_error:
                # Stopped while it waited for its participant or track: nothing recorded.
                await self._set(S.EGRESS_ABORTED, "stopped before it started")
                return
            self.uploads.attach_live(self.recipe)
            g = self.recipe.graph
            await g.start()
            await self._wait_active(g)
            errors = await self._until_stopped(g)
            await self._finish([str(e) for e in errors])
        except asyncio.CancelledError:
            await self._abort("egress aborted")
            raise
        except GraphError as e:
            await self._finish([], fatal=str(e))
        except Exception as e:
            if not isinstance(e, LkmediaError | OSError | ValueError):
                log.exception("egress %s failed", self.cfg.egress_id)
            await self._fail(error_text(e))
        finally:
            await self._close_chrome()
            await self.uploads.close()

    async def _until_stopped(self, g: Any) -> list[Any]:
        """Record until a stop, the session limit or the graph's own end; the branch errors."""
        limit_s = self.launch.max_duration
        limit = asyncio.ensure_future(asyncio.sleep(limit_s)) if limit_s > 0 else None
        stop = asyncio.ensure_future(self._stop.wait())
        closed = asyncio.ensure_future(self._source_closed.wait())
        done_graph = asyncio.ensure_future(g.wait())
        waiters = [x for x in (limit, stop, closed, done_graph) if x is not None]
        try:
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if limit is not None and limit in done:
                self._limit = True
                await self._set(S.EGRESS_ENDING)
            elif closed in done and not self._stop.is_set():
                await self.stop(END_SOURCE_CLOSED)  # (as the Go egress: ENDING, then COMPLETE)
            for w in (limit, stop, closed):
                if w is not None and not w.done():
                    w.cancel()
            errors: list[Any] = done_graph.result() if done_graph in done else await g.stop()
            return errors
        finally:
            # stop() ends the graph, so this wait has its answer too: collect it.
            await asyncio.gather(*waiters, return_exceptions=True)

    async def _build(self) -> Recipe:
        cfg, launch = self.cfg, self.launch
        # (a web egress is tied to no room: no token)
        token = egress_token(cfg.egress_id, cfg.room_name, launch.api_key, launch.api_secret) if cfg.room_name else ""
        if cfg.engine == "chrome":
            return await self._build_chrome(token)
        track = None
        video_passthrough = False
        decode_here = False  # lkmedia's subscriber, FFmpeg's decoders (else livekit.rtc decodes)
        lookup = RoomLookup(launch.ws_url, launch.api_key, launch.api_secret, cfg.room_name, token, self._stop)
        if cfg.request_type == "track":
            track = await lookup.track(cfg.track_id, FIND_TRACK_WAIT)
        elif cfg.request_type == "participant":
            part = await lookup.participant(cfg.identity, SUBSCRIBE_TIMEOUT)
            if cfg.video_enabled and part is not None and published_video(part, cfg.screen_share) is None:
                # (listed before its video: whether its video can be written as published
                # depends on the video's codec and size)
                part = await lookup.with_video(cfg.identity, lambda p: published_video(p, cfg.screen_share) is not None,
                                               VIDEO_LISTED_WAIT)
            video = published_video(part, cfg.screen_share)
            video_passthrough = participant_passthrough(cfg, video)
            decode_here = video is None or video["codec"] in VIDEO_CODECS
        self._track_codec = track["codec"] if track else ("h264" if video_passthrough else "")
        fields = filename_fields(cfg, identity=track["identity"] if track else "", track=track)
        r = build_recipe(cfg, self.dir, live=True, fields=fields, freeze_timeout=launch.freeze_timeout,
                         track_codec=track["codec"] if track else None, track_kind=track["kind"] if track else None,
                         video_passthrough=video_passthrough)
        g = r.graph
        if cfg.request_type == "room_composite":
            # A participant who leaves leaves the picture at once (no rejoin grace).
            src: Any = RoomSource(launch.ws_url, token, name="room", rejoin_grace=0.0)
            if r.mixer is not None:
                src.on_track(kind="audio", callback=self._mix_router(r))
            if r.compositor is not None:
                self.director = TileDirector(r.compositor, cfg.layout, cfg.egress_id)
                src.on_track(kind="video", callback=self._tile_router(r, self.director))
                g.listen(self.director.on_event)
            g.add(src)
        else:
            src = self._track_source(r, token, track, decode_here)
        self.source = src
        return r

    def _track_source(self, r: Recipe, token: str, track: dict[str, Any] | None, decode_here: bool) -> Any:
        """A participant's, a track pair's or a track's source, linked into the recipe:
        the publisher's packets as they came (passthrough), decoded here by FFmpeg
        (``decode_here``), or decoded by livekit.rtc."""
        cfg, launch, g = self.cfg, self.launch, r.graph
        kw: dict[str, Any] = {"name": "tracks", "wait_timeout": SUBSCRIBE_TIMEOUT}
        if cfg.request_type == "participant":
            kw.update(participant_identity=cfg.identity, screen_share=cfg.screen_share)
        elif cfg.request_type == "track_composite":
            kw.update(audio_track_id=cfg.audio_track_id or None, video_track_id=cfg.video_track_id or None)
        else:
            kw.update(track_id=cfg.track_id, kind=track["kind"] if track else None)
        src: Any
        if r.passthrough:  # the publisher's packets, never decoded (lkmedia.lkrtc)
            codec = self._track_codec
            src = EncodedTrackSource(launch.ws_url, token, video_codec=codec if codec in VIDEO_CODECS else None, **kw)
        elif decode_here:  # (cheaper per frame than livekit.rtc's decoded frames: bench/README.md)
            src = EncodedTrackSource(launch.ws_url, token, rejoin_grace=REJOIN_GRACE, **kw)
        else:
            src = TrackSource(launch.ws_url, token, **kw)
        g.listen(self._on_source_event)
        for kind, into in (("video", r.video_in), ("audio", r.audio_in)):
            if kind in src.outputs and into is not None:
                if decode_here and not r.passthrough:
                    g.chain(src.out(kind), Decoder(name=f"{kind}_decoder"), into)
                else:
                    g.link(src.out(kind), into)
        return src

    def _on_source_event(self, node: Any, event: str, fields: dict[str, Any]) -> None:
        """The source's participant (or track) gone past its rejoin grace: the egress ends,
        even where a live node (the audio mixer) would run on."""
        if node is self.source and event == "source_gone":
            self._source_closed.set()

    async def _build_chrome(self, token: str) -> Recipe:
        """The page in the job's own Chrome (lkmedia.egress.web), its display and sound
        captured into the recipe; the page's end or failure ends the job."""
        cfg, launch = self.cfg, self.launch
        work = os.path.join(launch.tmp_dir, ".chrome", cfg.egress_id)
        self.chrome = chrome = await open_page(cfg, launch, token, self._stop, work)
        r = build_recipe(cfg, self.dir, live=True, fields=filename_fields(cfg), freeze_timeout=launch.freeze_timeout)
        e = cfg.encoding
        pcm = await chrome.take_audio() if cfg.audio_enabled else None
        src = ScreenSource(chrome.display, e.width, e.height, e.fps, audio=pcm, video=cfg.video_enabled,
                           name="screen")
        r.graph.add(src)
        if r.video_in is not None:
            r.graph.link(src.out("video"), r.video_in)
        if r.audio_in is not None:
            r.graph.link(src.out("audio"), r.audio_in)
        self.source = src
        self._page_watch = asyncio.create_task(self._watch_page(chrome), name="page-watch")
        return r

    async def _watch_page(self, chrome: ChromeSession) -> None:
        waits = [asyncio.ensure_future(chrome.failed.wait()), asyncio.ensure_future(chrome.ended.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        if chrome.failure:
            await self.kill(f"Chrome: {chrome.failure}")
        elif chrome.ended.is_set():
            await self.stop("the page said END_RECORDING")

    async def _close_chrome(self) -> None:
        if self._page_watch is not None:
            self._page_watch.cancel()
            await asyncio.gather(self._page_watch, return_exceptions=True)
        chrome, self.chrome = self.chrome, None
        if chrome is not None:
            await chrome.close()

    @staticmethod
    def _tile_router(r: Recipe, director: TileDirector) -> Any:
        """Each video track of the room becomes a tile (lkmedia.egress.tiles orders them)."""

        def link(src: Any, port: Any, info: Any) -> None:
            edge = src.graph.link(port, r.compositor, policy="drop-oldest")
            director.track(edge.dst.name, info.participant, info.participant_name, info.source, info.joined_at,
                           info.track_sid)

        return link

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

    async def _wait_active(self, g: Any) -> None:
        """ACTIVE once media reaches the encoders (the Go egress: pipeline playing). A
        participant egress only gets here once its participant is in the room."""
        assert self.recipe is not None
        while not (self._stop.is_set() or g.finished):
            if any(n.stats().get("frames_in") or n.stats().get("samples_in") for n in self.recipe.encoders.values()) \
                    or any(s.stats().get("packets") or s.stats().get("bytes_sent") for s in self.recipe.sinks):
                self.active_at = time.time()
                self.info.details = self._media_path()
                await self._set(S.EGRESS_ACTIVE)
                return
            await asyncio.sleep(0.05)

    async def _finish(self, errors: list[str], fatal: str = "") -> None:
        assert self.recipe is not None
        fatal = fatal or self._kill_error
        await self._close_chrome()  # the capture has ended: Chrome goes before the job reports its end
        if self.source is not None and self.cfg.engine == "chrome":
            log.info("egress %s: capture %s", self.cfg.egress_id, self.source.stats())
        if self.recipe.compositor is not None:
            log.info("egress %s: compositor %s", self.cfg.egress_id, self.recipe.compositor.stats())
        up = await self.uploads.finish(self.recipe)
        fill_results(self.info, self.recipe.results(), up.locations)
        self.info.backup_storage_used = up.backup_storage_used
        if up.manifest_location:
            self.info.manifest_location = up.manifest_location
        if up.failures:
            self.info.error = "; ".join(up.failures)
        if fatal or (errors and not self._any_output()):
            await self._set(S.EGRESS_FAILED, fatal or "; ".join(errors))
        elif up.failures:
            # As the Go egress: an output that reached no storage fails the egress. The
            # error says where each file is kept (nothing recorded is deleted).
            await self._set(S.EGRESS_FAILED, "; ".join([*errors, self.info.error]))
        elif self.info.status == S.EGRESS_STARTING and not self._stop_reason:
            await self._set(S.EGRESS_FAILED, "no media arrived")
        else:
            if errors:
                self.info.error = "; ".join(errors)
            if self._stop_reason:
                self.info.details = "; ".join(d for d in (f"End reason: {self._stop_reason}", self._media_path()) if d)
            await self._set(S.EGRESS_LIMIT_REACHED if self._limit else S.EGRESS_COMPLETE)

    def _media_path(self) -> str:
        """Which path a track or participant egress's media took (EgressInfo.details): ''
        for other egress."""
        if self.recipe is None or self.cfg.websocket is not None:
            return ""
        if self.cfg.request_type == "participant":
            if self.recipe.passthrough:
                return "passthrough: the publisher's h264 video written as it arrived; audio transcoded"
            return "transcoded: video decoded and re-encoded"
        if self.cfg.request_type != "track":
            return ""
        codec = self._track_codec or "the track's codec"
        if self.recipe.passthrough:
            codec = "opus (sent as red)" if codec == "red" else codec
            return f"passthrough: the publisher's {codec} written as it arrived"
        return f"transcoded: {codec} decoded and re-encoded"

    def _any_output(self) -> bool:
        assert self.recipe is not None
        return any(not s.failed for s in self.recipe.sinks)

    async def _fail(self, error: str) -> None:
        if self.recipe is not None and self.recipe.graph.started:
            try:
                await self.recipe.graph.stop(timeout=10)
            except GraphError:
                pass
        await self._close_chrome()
        if self.recipe is not None and self.recipe.graph.started:
            try:
                up = await self.uploads.finish(self.recipe)
                fill_results(self.info, self.recipe.results(), up.locations)
            except Exception:
                log.exception("egress %s: could not save partial outputs", self.cfg.egress_id)
        await self._set(S.EGRESS_FAILED, error)

    async def _abort(self, reason: str) -> None:
        if self.recipe is not None and self.recipe.graph.started:
            await self.recipe.graph.cancel()
        await self._close_chrome()
        await self._set(S.EGRESS_ABORTED, reason)
