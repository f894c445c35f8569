"""What a LiveKit source is made of: a room joined with ``livekit.rtc``, the tracks it
subscribes to (only those it wants) and the feeds they keep going, frames converted to
PyAV on the graph clock. ``lkmedia.sources.livekit`` says which tracks each source follows
(timing, subscription and continuity rules are described there).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import numpy as np
from livekit import rtc

from ..core import Caps, Gap, LkmediaError, OutputPort, Policy, Source

log = logging.getLogger("lkmedia.sources.livekit")

VIDEO_TIME_BASE = Fraction(1, 90_000)
SAMPLE_RATE = 48_000
GAP_TICK = 0.5          # how often a silent feed reports the time it covers
GAP_MIN = 0.1           # a hole shorter than this needs no Gap before the next frame
AUDIO_RESYNC = 0.02     # counted audio further than this from its playout time re-anchors
STATS_EVERY = 0.25      # how often the audio jitter-buffer delay is read
SETTLE = 2.0            # for this long after a track's first audio, while its buffer settles,
SETTLE_STATS_EVERY = 0.05  # the delay is read this often
VIDEO_TS_TRUST = 1.0    # a render time further than this from arrival is not used
STREAM_CLOSE_WAIT = 0.5  # seconds a closing FFI stream may take to say it has ended
VIDEO_STREAM: dict[str, Any] = {"capacity": 4, "format": rtc.VideoBufferType.I420}  # a few frames, then the oldest go

_SOURCES = {rtc.TrackSource.SOURCE_CAMERA: "camera", rtc.TrackSource.SOURCE_MICROPHONE: "microphone",
            rtc.TrackSource.SOURCE_SCREENSHARE: "screen_share",
            rtc.TrackSource.SOURCE_SCREENSHARE_AUDIO: "screen_share_audio"}


_ROOM_ENDED = (rtc.DisconnectReason.ROOM_DELETED, rtc.DisconnectReason.ROOM_CLOSED,
               rtc.DisconnectReason.CLIENT_INITIATED)


class LiveKitSourceError(LkmediaError):
    """The room could not be joined, or what was asked for never appeared."""


@dataclass(frozen=True)
class TrackInfo:
    """What is known about a subscribed track when its output is made."""

    kind: str                 # "audio" | "video"
    participant: str          # identity
    participant_kind: int     # rtc.ParticipantKind value (agents, SIP, ...)
    source: str               # camera, microphone, screen_share, screen_share_audio, unknown
    track_sid: str
    name: str
    participant_name: str = ""  # the participant's display name ("" when it has none)
    joined_at: float = 0.0      # when the participant joined (Unix seconds; 0 unknown)

    @property
    def key(self) -> tuple[str, str, str]:
        """What a returning track must match to continue an output."""
        return (self.participant, self.kind, self.source if self.source != "unknown" else self.name)


@dataclass
class _Feed:
    """One output fed by one track at a time; a track that comes back takes over."""

    port: OutputPort
    info: TrackInfo
    track_sid: str | None = None
    stream: Any = None
    task: asyncio.Task[None] | None = None
    covered: float | None = None      # graph seconds up to which media or gaps were sent
    next_audio: float | None = None   # where counted audio continues
    last_pts: int = -1
    track: Any = None
    jb_delay: float = 0.0             # audio: the receiver's current jitter-buffer delay (s)
    jb_seen: tuple[float, int] = (0.0, 0)
    stats_at: float = 0.0
    stats_busy: bool = False
    first_audio_at: float | None = None  # when this track's first audio came (settling)
    fps_dur: float = 1 / 30
    muted: bool = False
    hole_muted: bool = False          # the hole being closed was a mute
    lost_at: float | None = None      # graph time the track went away
    ended: bool = False
    frames: int = 0
    empty: int = 0                    # frames with no picture, skipped
    gaps: int = 0
    gap_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def video_to_av(frame: rtc.VideoFrame) -> av.VideoFrame:
    """An rtc frame as a yuv420p av frame; even-sized I420 is wrapped without a copy."""
    if frame.type != rtc.VideoBufferType.I420:
        frame = frame.convert(rtc.VideoBufferType.I420)
    w, h = frame.width, frame.height
    data = np.frombuffer(frame.data, np.uint8)
    if w % 2 == 0 and h % 2 == 0:
        return av.VideoFrame.from_numpy_buffer(data[: w * h * 3 // 2].reshape(h * 3 // 2, w), format="yuv420p")
    out = av.VideoFrame(w, h, "yuv420p")
    cw, ch = (w + 1) // 2, (h + 1) // 2
    off = 0
    for i, (pw, ph) in enumerate(((w, h), (cw, ch), (cw, ch))):
        plane = out.planes[i]
        dst = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)  # type: ignore[call-overload]  # (a PyAV plane is a buffer)
        dst[:ph, :pw] = data[off : off + pw * ph].reshape(ph, pw)
        off += pw * ph
    return out


def audio_to_av(frame: rtc.AudioFrame) -> av.AudioFrame:
    """An rtc frame (s16 interleaved) as a packed s16 av frame, pts unset."""
    ch = frame.num_channels
    pcm = np.frombuffer(frame.data, np.int16)[: frame.samples_per_channel * ch]
    out = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="stereo" if ch == 2 else "mono")
    out.sample_rate = frame.sample_rate
    return out


class LiveKitSourceBase(Source):
    """Joins a room and feeds output ports from subscribed tracks (see module doc)."""

    live = True

    def __init__(self, url: str, token: str, *, name: str | None = None, channels: int = 2,
                 rejoin_grace: float = 5.0, connect_timeout: float = 10.0) -> None:
        super().__init__(name)
        if not url.startswith(("ws://", "wss://", "http://", "https://")):
            raise ValueError(f"{self.name}: LiveKit URL must start with ws://, wss://, http:// or https://")
        if not token:
            raise ValueError(f"{self.name}: a join token is needed")
        if channels not in (1, 2):
            raise ValueError(f"{self.name}: channels must be 1 or 2")
        self.url = url
        self._token = token
        self.channels = channels
        self.rejoin_grace = rejoin_grace
        self.connect_timeout = connect_timeout
        self.room: rtc.Room | None = None
        self.feeds: dict[Any, _Feed] = {}
        self._by_sid: dict[str, _Feed] = {}
        self._readers: set[asyncio.Task[None]] = set()
        self._t0 = 0.0  # time.monotonic() at graph time 0
        self._disconnected: str | None = None
        self._early: dict[str, tuple[str, Any]] = {}  # publication sid -> (identity, video stream)

    # -- hooks for subclasses ------------------------------------------------
    def _wants(self, info: TrackInfo) -> bool:
        """Whether a published track is to be subscribed (no side effects)."""
        raise NotImplementedError

    def _feed_for(self, info: TrackInfo) -> _Feed | None:
        """The feed a newly subscribed track continues or starts; None to ignore it."""
        raise NotImplementedError

    def _tick(self, now: float) -> None:
        """Called every GAP_TICK seconds after gaps are reported."""

    # -- helpers ---------------------------------------------------------------
    def _now(self) -> float:
        assert self.graph is not None
        return self.graph.clock.now()

    def _safe(self, text: str) -> str:
        return text.replace(self._token, "***")

    def _audio_caps(self) -> Caps:
        return Caps("audio", sample_rate=SAMPLE_RATE, layout="stereo" if self.channels == 2 else "mono",
                    sample_fmt="s16")

    @staticmethod
    def _video_caps() -> Caps:
        return Caps("video", pix_fmt="yuv420p")

    def negotiate(self) -> None:
        super().negotiate()
        for port in self.outputs.values():
            if port.caps is not None and port.caps.media == "video":
                for e in port.edges:  # live raw video: never make the room wait
                    if e.policy is Policy.BLOCK:
                        e.policy = Policy.DROP_OLDEST

    # -- run -------------------------------------------------------------------
    async def run(self) -> None:
        assert self.graph is not None
        self._t0 = time.monotonic() - self.graph.clock.now()
        room = rtc.Room()
        self.room = room
        room.on("track_published", lambda pub, part: self._consider(pub, part, fresh=True))
        room.on("track_subscribed", self._on_subscribed)
        room.on("track_unsubscribed", lambda track, pub, part: self._lose(pub.sid))
        room.on("track_unpublished", lambda pub, part: self._lose(pub.sid))
        room.on("participant_disconnected", self._on_participant_left)
        room.on("track_muted", lambda part, pub: self._set_muted(pub.sid, True))
        room.on("track_unmuted", lambda part, pub: self._set_muted(pub.sid, False))
        room.on("disconnected", self._on_disconnected)
        room.on("active_speakers_changed", lambda speakers: self.report(
            "active_speakers", identities=[s.identity for s in speakers]))
        room.on("participant_metadata_changed", lambda part, old, new: self.report(
            "metadata", identity=part.identity, metadata=new,
            local=room.local_participant is not None and part.identity == room.local_participant.identity))
        try:
            await self._connect(room)
            for part in list(room.remote_participants.values()):
                for pub in list(part.track_publications.values()):
                    self._consider(pub, part, fresh=False)
            while not self.stop_requested and self._disconnected is None:
                await self.wait_stop(GAP_TICK / 2)
                now = self._now()
                for feed in list(self.feeds.values()):
                    self._report_gap(feed, now)
                    if feed.info.kind == "audio":
                        self._poll_delay(feed, now, STATS_EVERY)
                self._tick(now)
            if self._disconnected is not None and not self.stop_requested:
                raise LiveKitSourceError(f"{self.name}: disconnected from the room ({self._disconnected})")
        finally:
            await self._close(room)

    async def _connect(self, room: rtc.Room) -> None:
        # Only the tracks this source wants are subscribed (a room may have many).
        opts = rtc.RoomOptions(auto_subscribe=False, connect_timeout=self.connect_timeout)
        try:
            await asyncio.wait_for(room.connect(self.url, self._token, opts), self.connect_timeout + 5)
        except TimeoutError:
            raise LiveKitSourceError(f"{self.name}: could not join the room within "
                                     f"{self.connect_timeout:g} s") from None
        except Exception as e:
            raise LiveKitSourceError(f"{self.name}: could not join the room: {self._safe(str(e))}") from None
        self.report("connected", room=room.name)

    async def _close(self, room: rtc.Room) -> None:
        early, self._early = list(self._early.values()), {}
        await asyncio.gather(*(self._detach(feed) for feed in self.feeds.values()),
                             *(self._close_reader(stream, None) for _, stream in early))
        while self._readers:
            await asyncio.gather(*list(self._readers), return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(room.disconnect(), 5.0)
        self.room = None

    # -- room events (sync callbacks from the SDK) ------------------------------
    @staticmethod
    def _info(pub: rtc.RemoteTrackPublication, part: rtc.RemoteParticipant) -> TrackInfo:
        kind = "video" if pub.kind == rtc.TrackKind.KIND_VIDEO else "audio"
        joined = part.joined_at  # a datetime, or None
        return TrackInfo(kind, part.identity, int(part.kind), _SOURCES.get(pub.source, "unknown"),
                         pub.sid, pub.name, part.name or "", joined.timestamp() if joined is not None else 0.0)

    def _consider(self, pub: rtc.RemoteTrackPublication, part: rtc.RemoteParticipant, fresh: bool) -> None:
        """Subscribe to a published track if this source wants it.

        A video track published just now gets its frame stream before it is subscribed
        (``VideoStream.from_participant``: the FFI attaches it the moment the track
        arrives). Made after our track_subscribed callback, the stream missed the first
        key frame in 3 of 10 rejoins here (the server forwards it ~15 ms after the
        subscription is bound; the callback comes 10-50 ms after that). The receiver then
        asks for another, which livekit-server's key-frame throttle (500 ms per track)
        holds back: the picture came 0.65 s late instead of ~0.1 s."""
        if self.stop_requested or pub.subscribed:
            return
        info = self._info(pub, part)
        if not self._wants(info):
            return
        if fresh and info.kind == "video" and info.source != "unknown" and pub.sid not in self._early:
            stream = rtc.VideoStream.from_participant(participant=part, track_source=pub.source, **VIDEO_STREAM)
            self._early[pub.sid] = (part.identity, stream)
        pub.set_subscribed(True)

    def _on_subscribed(self, track: rtc.Track, pub: rtc.RemoteTrackPublication,
                       part: rtc.RemoteParticipant) -> None:
        if pub.sid in self._by_sid or self.stop_requested:
            return
        info = self._info(pub, part)
        kind = info.kind
        try:
            feed = self._feed_for(info)
        except LkmediaError as e:  # a link made now failed its caps check: skip this track
            log.error("%s: cannot take %s track %s of %s: %s", self.name, kind, pub.sid, part.identity, e)
            self.report("track_refused", participant=part.identity, kind=kind, error=str(e))
            return
        if feed is None:
            return
        if feed.task is not None:  # a second track for one output: keep the first
            return
        feed.track_sid, feed.lost_at, feed.muted = pub.sid, None, bool(pub.muted)
        feed.track, feed.jb_seen, feed.stats_at = track, (0.0, 0), -STATS_EVERY
        feed.first_audio_at = None
        self._by_sid[pub.sid] = feed
        if kind == "video":
            early = self._early.pop(pub.sid, None)
            feed.stream = early[1] if early is not None else rtc.VideoStream(track, **VIDEO_STREAM)
            feed.task = asyncio.get_running_loop().create_task(self._read_video(feed, feed.stream))
        else:
            feed.stream = rtc.AudioStream(track, capacity=50, sample_rate=SAMPLE_RATE,
                                          num_channels=self.channels)
            feed.task = asyncio.get_running_loop().create_task(self._read_audio(feed, feed.stream))
        self._track_task(feed.task)
        self.report("track_subscribed", participant=info.participant, kind=kind, track_sid=pub.sid,
                    output=feed.port.name)

    def _lose(self, sid: str) -> None:
        early = self._early.pop(sid, None)
        if early is not None:  # gone before it was subscribed
            self._spawn(self._close_reader(early[1], None))
        feed = self._by_sid.pop(sid, None)
        if feed is None:
            return
        if feed.lost_at is None:
            feed.lost_at = self._now()
        feed.track_sid = feed.track = None
        self._spawn(self._detach(feed))
        self.report("track_lost", participant=feed.info.participant, kind=feed.info.kind, track_sid=sid)

    def _on_participant_left(self, part: rtc.RemoteParticipant) -> None:
        for sid, (identity, _) in list(self._early.items()):
            if identity == part.identity:
                self._lose(sid)
        for sid, feed in list(self._by_sid.items()):
            if feed.info.participant == part.identity:
                self._lose(sid)

    def _set_muted(self, sid: str, muted: bool) -> None:
        feed = self._by_sid.get(sid)
        if feed is not None and feed.muted != muted:
            feed.muted = muted
            feed.hole_muted = feed.hole_muted or muted
            if muted:
                self._report_gap(feed, self._now(), force=True)
            self.report("track_muted" if muted else "track_unmuted", participant=feed.info.participant,
                        kind=feed.info.kind, track_sid=sid)

    def _on_disconnected(self, reason: Any = None) -> None:
        if reason in _ROOM_ENDED:  # the room is over: the recording ends normally
            self.report("room_ended", reason=rtc.DisconnectReason.Name(reason))
            self.request_stop()
            return
        try:
            self._disconnected = rtc.DisconnectReason.Name(reason)
        except (ValueError, TypeError):
            self._disconnected = str(reason)
        if self._stop_event is not None:
            self._stop_event.set()  # wake run() up: it ends with an error unless stopping

    # -- reading -----------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        self._track_task(asyncio.get_running_loop().create_task(coro))

    def _track_task(self, task: asyncio.Task[None]) -> None:
        """Every helper task is kept until done and awaited when the source closes."""
        self._readers.add(task)
        task.add_done_callback(self._readers.discard)

    def _detach(self, feed: _Feed) -> Any:
        """Take the feed's reader off it now (a returning track may arrive any moment);
        returns the coroutine that closes the old stream and task."""
        stream, task = feed.stream, feed.task
        feed.stream = feed.task = None
        return self._close_reader(stream, task)

    @staticmethod
    async def _close_reader(stream: Any, task: asyncio.Task[None] | None) -> None:
        if stream is not None:
            # A participant stream (VideoStream.from_participant) never gets its end event
            # from the FFI after it is disposed: do not wait for it long.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(stream.aclose(), STREAM_CLOSE_WAIT)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _report_gap(self, feed: _Feed, now: float, force: bool = False) -> None:
        """A feed with nothing arriving (muted, lost) tells what time it covers."""
        if feed.ended or feed.covered is None:
            return
        silent = feed.muted or feed.lost_at is not None
        if feed.info.kind == "audio":
            now -= feed.jb_delay  # audio time is playout time less the jitter buffer
        if not silent or (not force and now - feed.covered < GAP_TICK):
            return
        if now > feed.covered:
            self._put(feed, Gap(feed.covered, now, muted=feed.muted and feed.lost_at is None))

    def _close_gap(self, feed: _Feed, start: float) -> None:
        """Media resumes at ``start``: say what the hole was, if there was one."""
        if feed.covered is not None and start - feed.covered > GAP_MIN:
            self._put(feed, Gap(feed.covered, start, muted=feed.muted or feed.hole_muted))
        feed.hole_muted = False

    @staticmethod
    def _put(feed: _Feed, item: Gap) -> None:
        """Queue a Gap without waiting (a full blocking edge skips it: gaps are advisory)."""
        feed.gaps += 1
        feed.gap_seconds += item.end - item.start
        feed.covered = max(feed.covered or 0.0, item.end)
        for e in feed.port.edges:
            e.put_nowait(item)


    async def _read_video(self, feed: _Feed, stream: rtc.VideoStream) -> None:
        async for ev in stream:
            if ev.frame.width < 2 or ev.frame.height < 2:
                # A track that ends (a publisher's clip, a camera unpublished) can hand out
                # a frame with no picture (2x0 seen): not a frame to record or encode.
                feed.empty += 1
                continue
            arrival = self._now()
            t = arrival
            if ev.timestamp_us > 0:
                ts = ev.timestamp_us / 1e6 - self._t0
                if abs(ts - arrival) < VIDEO_TS_TRUST:
                    t = ts
            pts = round(t * 90_000)
            if pts <= feed.last_pts:
                continue
            frame = video_to_av(ev.frame)
            frame.pts, frame.time_base = pts, VIDEO_TIME_BASE
            if feed.last_pts >= 0:
                feed.fps_dur = min(0.2, max(0.005, (pts - feed.last_pts) / 90_000))
            self._close_gap(feed, t)
            feed.last_pts = pts
            feed.covered = max(feed.covered or 0.0, t + feed.fps_dur)
            feed.frames += 1
            await feed.port.emit(frame)

    def _poll_delay(self, feed: _Feed, now: float, every: float) -> None:
        """Read the audio track's jitter-buffer delay in the background if the last read
        was ``every`` s ago or more."""
        if feed.track is not None and now - feed.stats_at >= every:
            feed.stats_at = now
            self._spawn(self._read_delay(feed, feed.track))

    async def _read_delay(self, feed: _Feed, track: rtc.Track) -> None:
        """Audio is handed over at playout, a jitter buffer after it was captured; video
        render times have that wait taken out already (no receive-side lip sync between
        separately published tracks), so audio is dated back by the buffer's delay."""
        if feed.stats_busy:
            return
        feed.stats_busy = True
        try:
            stats = await asyncio.wait_for(track.get_stats(), 2.0)
        except Exception:  # stats are a refinement: keep the last figure
            return
        finally:
            feed.stats_busy = False
        for st in stats:
            if st.WhichOneof("stats") != "inbound_rtp":
                continue
            rtp = st.inbound_rtp.inbound
            total, count = rtp.jitter_buffer_delay, rtp.jitter_buffer_emitted_count
            d_total, d_count = total - feed.jb_seen[0], count - feed.jb_seen[1]
            if d_count > 0 and feed.track is track:
                feed.jb_delay = min(1.0, max(0.0, d_total / d_count))
                feed.jb_seen = (total, count)
                log.debug("%s: %s jitter buffer %.1f ms", self.name, feed.port.name, feed.jb_delay * 1000)
            return

    async def _read_audio(self, feed: _Feed, stream: rtc.AudioStream) -> None:
        async for ev in stream:
            rf = ev.frame
            n = rf.samples_per_channel
            if n == 0:
                continue
            now = self._now()  # (before any wait: this chunk's playout time)
            if feed.next_audio is None and feed.jb_seen[1] == 0 and feed.track is not None:
                # the first audio is dated with the buffer's delay, not with none until the
                # next stats tick (the first beep came up to 62 ms late under load)
                await self._read_delay(feed, feed.track)
            if feed.first_audio_at is None:
                feed.first_audio_at = now
            elif now - feed.first_audio_at < SETTLE:
                # the buffer still grows while the first beep plays (under load: 10 -> 80 ms
                # in its first 0.3 s; read 4 times a second, a first beep came 62 ms late):
                # follow it closely until it has settled
                self._poll_delay(feed, now, SETTLE_STATS_EVERY)
            played = now - feed.jb_delay
            if feed.muted:
                continue  # the muted time is reported as gaps, not as silence
            start = feed.next_audio
            if start is not None and start - played > AUDIO_RESYNC:
                continue  # the buffer grew (stretched audio): drop 10 ms to stay in step
            if start is None or played - start > AUDIO_RESYNC:
                start = max(played, feed.covered or played)  # never back into a reported gap
                self._close_gap(feed, start)
            feed.hole_muted = False
            frame = audio_to_av(rf)
            frame.pts = round(start * rf.sample_rate)
            frame.time_base = Fraction(1, rf.sample_rate)
            feed.next_audio = start + n / rf.sample_rate
            feed.covered = feed.next_audio
            feed.frames += 1
            await feed.port.emit(frame)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"gaps": sum(f.gaps for f in self.feeds.values())}
        for f in self.feeds.values():
            out[f"{f.port.name}.frames"] = f.frames
            out[f"{f.port.name}.gap_seconds"] = round(f.gap_seconds, 3)
        return out
