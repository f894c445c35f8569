"""EncodedTrackSource: a participant's or a track's media as the publisher encoded it.

Outputs "audio" (Opus) and/or "video" (VP8 or H.264) carry ``av.Packet``s, never
decoded: a muxer writes the publisher's own bitstream (track egress without transcoding).
It joins the room as a participant of our own (``lkmedia.lkrtc``), with auto-subscribe
off, and subscribes only to what it follows:

- ``participant_identity``: that participant's camera and microphone (``kind`` to keep
  one of them; ``screen_share`` for its screen share and its audio);
- ``track_id`` + ``kind``: one track; ``audio_track_id`` / ``video_track_id``: two.

Timing. Packet times are seconds on ``graph.clock`` (pts in 1/48000 or 1/90000): each
frame is dated from its RTP timestamp on one clock per participant, put in line with
RTCP sender reports (``lkmedia.lkrtc.clock``), so audio and video stay in sync. Audio is
continuous; holes become empty Opus frames (``fill_gaps``), and a subscribed audio track
whose publisher sends nothing for ``SILENCE_LAG`` s (a silent or muted microphone, which
sends no RTP at all) is written as Opus silence that far behind real time.

Flow. A frame goes onto the output's edges from the network callback when they have
room (no task hop); when one is full, frames wait in a backlog of ``backlog`` seconds that
a task drains in order (BLOCK edges: nothing is lost while the consumer catches up). A
backlog that overflows drops its oldest frames (video then up to the next key frame).

End. An output ends (EOS) when its track is unpublished or its participant leaves; the
source ends when every output has ended, on ``request_stop()``, or fails when nothing it
follows appeared within ``wait_timeout`` s or the connection is lost. With
``rejoin_grace`` (for a graph that decodes), a track that goes away leaves its output
open instead: the next track of that kind it follows (republished, or its participant
back with a new sid, maybe in another codec) feeds it on with packets of a template of
their own (lkmedia.nodes.decode.Decoder opens a decoder for them), and the source ends
once every track has been gone ``rejoin_grace`` s.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import av
from livekit.protocol import models as proto_models

from ..core import Caps, LkmediaError, OutputPort, Policy, Source
from ..lkrtc import EncodedFrame, RemoteTrack, SignalError, Subscriber, fastpath
from ..lkrtc.packets import AUDIO_RATE, Packetizer
from .follow import followed_tracks

log = logging.getLogger("lkmedia.sources.livekit_encoded")

TICK = 0.5
SILENCE_LAG = 1.0   # an audio track that sent nothing for this long is written as silence up to then
VIDEO_CODECS = ("vp8", "vp9", "av1", "h264")


class EncodedSourceError(LkmediaError):
    """The room could not be joined, or what was asked for never appeared."""


@dataclass
class _Out:
    """One output and the track feeding it."""

    port: OutputPort
    kind: str
    track: RemoteTrack | None = None
    packetizer: Packetizer | None = None
    backlog: deque[av.Packet] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    pump: asyncio.Task[None] | None = None
    sending: bool = False    # the pump holds a packet it waits to put on a full edge
    ended: bool = False
    skip_to_key: bool = False
    overflowed: int = 0      # frames the backlog dropped
    since: float | None = None   # graph time the track was subscribed
    last_frame: float = 0.0      # time.monotonic() of its last frame
    lost_at: float | None = None  # time.monotonic() its track went away (rejoin_grace)


class EncodedTrackSource(Source):
    """See module doc."""

    live = True

    def __init__(self, url: str, token: str, *, participant_identity: str | None = None,
                 track_id: str | None = None, audio_track_id: str | None = None,
                 video_track_id: str | None = None, kind: str | None = None, screen_share: bool = False,
                 video_codec: str | None = None, wait_timeout: float | None = None,
                 connect_timeout: float = 10.0, fill_gaps: bool = True, backlog: float = 10.0,
                 rejoin_grace: float | None = None, ice_servers: list[Any] | None = None,
                 name: str | None = None) -> None:
        super().__init__(name)
        self.track_ids = followed_tracks(self.name, participant_identity=participant_identity, track_id=track_id,
                                         audio_track_id=audio_track_id, video_track_id=video_track_id, kind=kind)
        if video_codec not in (None, *VIDEO_CODECS):
            raise ValueError(f"{self.name}: video_codec must be one of {VIDEO_CODECS}")
        if not url.startswith(("ws://", "wss://", "http://", "https://")):
            raise ValueError(f"{self.name}: LiveKit URL must start with ws://, wss://, http:// or https://")
        self.url = url
        self._token = token
        self.participant_identity = participant_identity
        self._sources = ({proto_models.TrackSource.SCREEN_SHARE, proto_models.TrackSource.SCREEN_SHARE_AUDIO}
                         if screen_share else {proto_models.TrackSource.CAMERA, proto_models.TrackSource.MICROPHONE,
                                               proto_models.TrackSource.UNKNOWN})
        self.wait_timeout = wait_timeout
        self.connect_timeout = connect_timeout
        self.fill_gaps = fill_gaps
        self.backlog_seconds = backlog
        self.rejoin_grace = rejoin_grace
        self._appeared = False      # a followed track was subscribed (wait_timeout is over)
        self._ice_servers = ice_servers
        self.outs: dict[str, _Out] = {}
        for k in ("video", "audio"):
            if (kind is None or k == kind) and (participant_identity or self.track_ids[k]):
                caps = (Caps("audio", encoded=True, codec="opus", sample_rate=AUDIO_RATE) if k == "audio"
                        else Caps("video", encoded=True, codec=video_codec))
                self.outs[k] = _Out(self.add_output(k, caps), k)
        self.subscriber: Subscriber | None = None
        self._offset = 0.0          # time.monotonic() at graph time 0
        self._failure: str | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- run -------------------------------------------------------------------------
    async def run(self) -> None:
        assert self.graph is not None
        self._offset = time.monotonic() - self.graph.clock.now()
        audio_only = set(self.outs) == {"audio"}  # (read less often: lkmedia.lkrtc.fastpath)
        sub = Subscriber(self.url, self._token, connect_timeout=self.connect_timeout,
                         on_event=self._on_event, ice_servers=self._ice_servers,
                         poll=fastpath.AUDIO_POLL_INTERVAL if audio_only else fastpath.POLL_INTERVAL)
        self.subscriber = sub
        try:
            try:
                await sub.connect()
            except SignalError as e:
                raise EncodedSourceError(f"{self.name}: could not join the room: {e}") from None
            self.report("connected", room=sub.join.room.name if sub.join else "")
            for p in list(sub.participants.values()):
                for t in p.tracks:
                    self._consider(p, t)
            started = time.monotonic()
            while not self.stop_requested and self._failure is None:
                await self.wait_stop(deadline=fastpath.tick_at(TICK))  # (in a poll's wake-up)
                self._fill_silence()
                if self.outs and all(o.ended for o in self.outs.values()):
                    break
                if self._gone():
                    self.report("source_gone", seconds=self.rejoin_grace)
                    break
                if (self.wait_timeout is not None and not self._appeared
                        and time.monotonic() - started > self.wait_timeout):
                    raise EncodedSourceError(f"{self.name}: {self._wanted()} did not appear within "
                                             f"{self.wait_timeout:g} s")
            if self._failure is not None and not self.stop_requested:
                raise EncodedSourceError(f"{self.name}: {self._failure}")
        finally:
            if self.stop_requested:
                self._fill_silence(lag=0.0)  # a silent track is written up to the stop
            await sub.close()
            await self._drain()

    def _gone(self) -> bool:
        """Every track followed went away ``rejoin_grace`` s ago or more (an output that
        never had one, such as an audio-only participant's video, does not count)."""
        if self.rejoin_grace is None or not self._appeared:
            return False
        lost = [o.lost_at for o in self.outs.values() if o.since is not None or o.track is not None]
        return all(t is not None and time.monotonic() - t >= self.rejoin_grace for t in lost)

    def _wanted(self) -> str:
        return self.participant_identity or ", ".join(s for s in self.track_ids.values() if s)

    async def _drain(self) -> None:
        """Emit what the backlogs hold, then end the pumps."""
        for o in self.outs.values():
            o.ended = True
            o.wake.set()
        pumps = [o.pump for o in self.outs.values() if o.pump is not None]
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*pumps, return_exceptions=True), 10.0)
        for task in list(self._tasks):
            task.cancel()

    # -- which tracks ------------------------------------------------------------------
    def _kind_wanted(self, part: proto_models.ParticipantInfo, info: proto_models.TrackInfo) -> str | None:
        kind = {proto_models.TrackType.AUDIO: "audio", proto_models.TrackType.VIDEO: "video"}.get(info.type)
        if kind is None or kind not in self.outs or self.outs[kind].track is not None:
            return None
        sid = self.track_ids[kind]
        if sid is not None:
            return kind if info.sid == sid else None
        if part.identity != self.participant_identity or info.source not in self._sources:
            return None
        return kind

    def _consider(self, part: proto_models.ParticipantInfo, info: proto_models.TrackInfo) -> None:
        kind = self._kind_wanted(part, info)
        if kind is None or self.subscriber is None or self.stop_requested:
            return
        out = self.outs[kind]
        caps = out.port.caps
        codec = "opus" if kind == "audio" else info.mime_type.split("/")[-1].lower()
        if kind == "video" and caps is not None and caps.codec is not None and caps.codec != codec:
            self.report("track_refused", participant=part.identity, kind=kind, track_sid=info.sid,
                        error=f"{codec} published, {caps.codec} expected")
            return
        # placeholder so that a second announcement does not subscribe twice
        out.track = RemoteTrack(info.sid, kind, part.identity, part.sid, "", info.name, info.mime_type)
        self._spawn(self._subscribe(out, info.sid))

    async def _subscribe(self, out: _Out, sid: str) -> None:
        assert self.subscriber is not None
        try:
            out.track = await self.subscriber.subscribe(sid, on_frame=self._frame_handler(out),
                                                        on_end=functools.partial(self._track_ended, out))
        except (KeyError, ValueError) as e:
            out.track = None
            log.warning("%s: cannot subscribe to %s: %s", self.name, sid, e)
            return
        out.since, out.last_frame = time.monotonic() - self._offset, time.monotonic()
        if out.pump is None:
            out.pump = asyncio.get_running_loop().create_task(self._pump(out), name=f"{self.name}-{out.kind}")
        if out.lost_at is not None:
            self.report("track_resumed", participant=out.track.participant, kind=out.kind,
                        gap=round(time.monotonic() - out.lost_at, 3))
        self._appeared, out.lost_at = True, None
        self.report("track_subscribed", participant=out.track.participant, kind=out.kind, track_sid=sid,
                    codec=out.track.codec)

    def _track_ended(self, out: _Out, track: RemoteTrack) -> None:
        if out.track is not track or out.ended:
            return
        if self.rejoin_grace is None:
            out.ended = True
            out.wake.set()
            self.report("track_ended", participant=track.participant, kind=out.kind, track_sid=track.sid)
            return
        # (the output stays open for the next track it follows: see the module doc)
        out.track, out.packetizer, out.lost_at = None, None, time.monotonic()
        self.report("track_lost", participant=track.participant, kind=out.kind, track_sid=track.sid)

    def _lost(self, sid: str | None = None, participant_sid: str | None = None) -> None:
        """A track followed was unpublished (``sid``), or its participant left."""
        for o in self.outs.values():
            t = o.track
            if t is not None and (t.sid == sid or (participant_sid is not None and t.participant_sid == participant_sid)):
                self._track_ended(o, t)

    def _on_event(self, kind: str, fields: dict[str, Any]) -> None:
        if kind == "track_published":
            self._consider(fields["participant"], fields["track"])
        elif kind == "track_unpublished" and self.rejoin_grace is not None:
            self._lost(sid=fields["track"].sid)
        elif kind == "participant_left" and self.rejoin_grace is not None:
            self._lost(participant_sid=fields["participant"].sid)
        elif kind == "disconnected":
            self._failure = f"disconnected from the room ({fields.get('reason')})"
            if self._stop_event is not None:
                self._stop_event.set()
        elif kind == "subscription_failed":
            self.report("subscription_failed", track_sid=fields["track_sid"], error=fields["error"])
        elif kind in ("track_muted", "track_unmuted"):
            info = fields["track"]
            if any(o.track is not None and o.track.sid == info.sid for o in self.outs.values()):
                self.report(kind, participant=fields["participant"].identity, track_sid=info.sid)

    # -- frames ------------------------------------------------------------------------
    def _frame_handler(self, out: _Out) -> Any:
        def on_frame(track: RemoteTrack, frame: EncodedFrame) -> None:
            if out.ended or out.track is None or track.sid != out.track.sid:  # (a track gone: rejoin_grace)
                return
            out.last_frame = time.monotonic()
            if out.packetizer is None:  # the codec is the one the first packet carried
                out.packetizer = Packetizer(out.kind, track.codec or "", fill_gaps=self.fill_gaps)
            packets = out.packetizer(frame, self._offset)
            if out.packetizer.need_key and track.receiver is not None:
                track.receiver.request_keyframe()  # (its first frame would not decode alone)
            self._emit(out, packets)

        return on_frame

    def _emit(self, out: _Out, packets: list[av.Packet]) -> None:
        edges = out.port.edges
        for p in packets:
            if not out.backlog and not out.sending and all(e.closed or len(e) < e.capacity or e.policy is not Policy.BLOCK
                                       for e in edges):
                out.port.emit_nowait(p)  # the common case: straight onto the edge, no task hop
            else:
                self._queue(out, p)

    def _fill_silence(self, lag: float = SILENCE_LAG) -> None:
        """Silence for the audio tracks whose publishers sent nothing for SILENCE_LAG s,
        up to ``lag`` s ago."""
        if not self.fill_gaps:
            return
        mono = time.monotonic()
        for o in self.outs.values():
            if o.kind != "audio" or o.ended or o.track is None or o.since is None or mono - o.last_frame < SILENCE_LAG:
                continue
            if o.packetizer is None:
                o.packetizer = Packetizer("audio", "opus", fill_gaps=True)
            self._emit(o, o.packetizer.silence(o.since, mono - self._offset - lag))

    def _queue(self, out: _Out, packet: av.Packet) -> None:
        if out.skip_to_key and not packet.is_keyframe:
            out.overflowed += 1
            return
        out.skip_to_key = False
        out.backlog.append(packet)
        limit = self.backlog_seconds * (50 if out.kind == "audio" else 30)
        while len(out.backlog) > limit:
            out.backlog.popleft()
            out.overflowed += 1
            if out.kind == "video":  # what follows a dropped video frame cannot be decoded
                while out.backlog and not out.backlog[0].is_keyframe:
                    out.backlog.popleft()
                    out.overflowed += 1
                out.skip_to_key = not out.backlog
        out.wake.set()

    async def _pump(self, out: _Out) -> None:
        """Emit the backlog in order, waiting on full edges (backpressure)."""
        port = out.port
        while True:
            while out.backlog:
                out.sending = True  # (until it is out, nothing may go straight past it)
                try:
                    await port.emit(out.backlog.popleft())
                finally:
                    out.sending = False
            if out.ended:
                await port.eos()  # this output is over (the others may go on)
                return
            out.wake.clear()
            await out.wake.wait()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, o in self.outs.items():
            if o.packetizer is not None:
                pk = o.packetizer
                out[f"{k}.packets"] = pk.packets
                out[f"{k}.filled_seconds"] = round(pk.filled_seconds, 3)
                out[f"{k}.silent_seconds"] = round(pk.silent_seconds, 3)
                out[f"{k}.dropped"] = pk.dropped + o.overflowed
            if o.track is not None:
                out[f"{k}.receiver"] = o.track.stats()
        return out
