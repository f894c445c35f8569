"""Subscriber: a LiveKit participant of our own that only subscribes, and hands out the
publishers' encoded frames (no decoding anywhere).

    sub = Subscriber(url, token, on_event=print)
    await sub.connect()                       # join with auto-subscribe off
    track = await sub.subscribe(track_sid, on_frame=frames.append)
    ...
    await sub.close()                         # leave

Signalling is ``signal.SignalClient``; media is one aiortc ``RTCPeerConnection`` that
answers the server's subscriber offers, each of its transceivers given an
``EncodedReceiver`` (``receiver.install``) before aiortc starts one of its own decoders.
A transceiver's track is known from the offer's ``mid_to_track_id`` (or the m-line's
msid, "participant_sid|track_sid"). The tracks of one participant share one
``ParticipantClock``, so their frame times line up (``clock``).

Events (``on_event(kind, fields)``, on the event loop): participant_joined,
participant_left, track_published, track_unpublished, track_muted, track_unmuted
(fields: participant, track), subscription_failed (track_sid, error), disconnected (reason).
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcconfiguration import RTCBundlePolicy
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.sdp import SessionDescription, candidate_from_sdp
from livekit.protocol import models as proto_models
from livekit.protocol import rtc as proto_rtc

from . import fastpath
from .clock import ParticipantClock
from .frames import EncodedFrame
from .receiver import EncodedReceiver, install
from .signal import SUBSCRIBER, SignalClient, SignalError

log = logging.getLogger("lkmedia.lkrtc.subscriber")

EventHandler = Callable[[str, dict[str, Any]], None]
FrameCallback = Callable[["RemoteTrack", EncodedFrame], None]

_SOURCES = {proto_models.TrackSource.CAMERA: "camera", proto_models.TrackSource.MICROPHONE: "microphone",
            proto_models.TrackSource.SCREEN_SHARE: "screen_share",
            proto_models.TrackSource.SCREEN_SHARE_AUDIO: "screen_share_audio"}


# Video codecs aiortc does not know, that we receive all the same (no decoder is needed:
# lkmedia.lkrtc.frames reads their payload formats).
_UNKNOWN_TO_AIORTC = ("VP9", "AV1")


@dataclass
class _Renamed:
    """What ``_as_vp8`` changed in an offer: the codecs it named VP8, by payload type, and
    each m-line's codecs as offered, in order (by mid)."""

    codecs: dict[int, RTCRtpCodecParameters] = field(default_factory=dict)
    offered: dict[str, list[RTCRtpCodecParameters]] = field(default_factory=dict)


def _as_vp8(sdp: str) -> tuple[str, _Renamed]:
    """The offer with ``_UNKNOWN_TO_AIORTC`` codecs named VP8, so that aiortc negotiates
    them (its codec list is global, and shared with the publishers it also runs)."""
    renamed = _Renamed()
    for m in SessionDescription.parse(sdp).media:
        renamed.offered[m.rtp.muxId] = m.rtp.codecs
        for c in m.rtp.codecs:
            if c.name.upper() in _UNKNOWN_TO_AIORTC and c.payloadType is not None:
                renamed.codecs[c.payloadType] = c
    if not renamed.codecs:
        return sdp, renamed
    pts = "|".join(str(pt) for pt in renamed.codecs)
    return re.sub(rf"^a=rtpmap:({pts}) [^/\s]+/", r"a=rtpmap:\1 VP8/", sdp, flags=re.M), renamed


def _restore_codecs(pc: RTCPeerConnection, renamed: _Renamed) -> None:
    """Give the codecs ``_as_vp8`` renamed their names, format parameters and payload types
    back in what aiortc negotiated (aiortc keeps an offered payload type only in 96-127:
    livekit-server offers AV1 as 35), with their RTX: the answer then accepts them."""
    if not renamed.codecs:
        return
    for tr in pc.getTransceivers():
        codecs = tr._codecs  # (aiortc's negotiated codecs: no public way to change them)
        offered = renamed.offered.get(tr.mid or "", [])
        # aiortc made one VP8 entry per codec offered as VP8, in the offer's order
        as_vp8 = iter([c for c in codecs if c.mimeType.lower() == "video/vp8"])
        for oc in offered:
            if oc.name.upper() != "VP8" and oc.payloadType not in renamed.codecs:
                continue
            ours = next(as_vp8, None)
            if ours is None:
                break
            if oc.payloadType in renamed.codecs:
                ours.payloadType, ours.mimeType, ours.parameters = oc.payloadType, oc.mimeType, dict(oc.parameters)
        have = {c.payloadType for c in codecs}
        for oc in offered:  # the RTX of a codec aiortc did not know was left out: put it back
            if oc.name.lower() == "rtx" and oc.parameters.get("apt") in renamed.codecs and oc.payloadType not in have:
                codecs.append(RTCRtpCodecParameters(mimeType=oc.mimeType, clockRate=oc.clockRate,
                                                    payloadType=oc.payloadType, parameters=dict(oc.parameters)))


@dataclass
class RemoteTrack:
    """A track we subscribed to. ``codec`` is known once its m-line is negotiated."""

    sid: str
    kind: str                     # "audio" | "video"
    participant: str              # identity
    participant_sid: str
    source: str                   # camera, microphone, screen_share, screen_share_audio, unknown
    name: str
    mime_type: str
    on_frame: FrameCallback | None = None
    on_end: Callable[[RemoteTrack], None] | None = None
    receiver: EncodedReceiver | None = None
    ended: bool = False
    bound: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def codec(self) -> str | None:
        if self.receiver is not None and self.receiver.codec is not None:
            return self.receiver.codec
        codec = self.mime_type.split("/")[-1].lower()
        return "opus" if codec == "red" else (codec or None)  # RED: the server sends us its Opus

    def stats(self) -> dict[str, Any]:
        return self.receiver.stats() if self.receiver is not None else {}


def track_kind(info: proto_models.TrackInfo) -> str | None:
    return {proto_models.TrackType.AUDIO: "audio", proto_models.TrackType.VIDEO: "video"}.get(info.type)


class Subscriber:
    """One participant that subscribes only (see module doc)."""

    def __init__(self, url: str, token: str, *, connect_timeout: float = 10.0,
                 on_event: EventHandler | None = None, ice_servers: list[RTCIceServer] | None = None,
                 poll: float = fastpath.POLL_INTERVAL) -> None:
        self.poll = poll  # s between reads of its sockets (fastpath; AUDIO_POLL_INTERVAL for audio only)
        self.signal = SignalClient(url, token, connect_timeout=connect_timeout, on_message=self._on_message)
        self.on_event = on_event
        self._ice_servers = ice_servers
        self.pc: RTCPeerConnection | None = None
        self.join: proto_rtc.JoinResponse | None = None
        self.identity = ""
        self.participants: dict[str, proto_models.ParticipantInfo] = {}  # sid -> info (others)
        self.tracks: dict[str, RemoteTrack] = {}                          # sid -> subscribed
        self.clocks: dict[str, ParticipantClock] = {}                    # participant sid -> clock
        self._early_candidates: list[Any] = []
        self._closing = False
        self._watch: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.offers = 0

    # -- connect / close -----------------------------------------------------------
    async def connect(self) -> proto_rtc.JoinResponse:
        join = await self.signal.connect()
        self.join = join
        self.identity = join.participant.identity
        if not join.subscriber_primary:
            await self.signal.close()
            raise SignalError("the server did not make the subscriber connection primary "
                              "(the token may lack canSubscribe)")
        servers = self._ice_servers
        if servers is None:  # the server's STUN/TURN, if it has any (none: host candidates)
            servers = [RTCIceServer(urls=list(s.urls), username=s.username or None,
                                    credential=s.credential or None) for s in join.ice_servers]
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        for p in join.other_participants:
            self._update_participant(p, announce=False)
        self._watch = asyncio.get_running_loop().create_task(self._watch_signal(), name="lkrtc-watch")
        return join

    async def close(self) -> None:
        self._closing = True
        fastpath.drain()  # (what was sent until now is in)
        await self.signal.close()
        if self.pc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pc.close(), 5.0)
        for t in self.tracks.values():
            self._end_track(t)
        for task in list(self._tasks):
            task.cancel()
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch

    async def _watch_signal(self) -> None:
        await self.signal.wait_closed()
        if not self._closing:
            self._emit("disconnected", reason=self.signal.closed_reason or "closed")

    def _emit(self, kind: str, **fields: Any) -> None:
        if self.on_event is not None:
            try:
                self.on_event(kind, fields)
            except Exception:
                log.exception("subscriber: event handler failed on %s", kind)

    # -- subscriptions -----------------------------------------------------------------
    def find_track(self, sid: str) -> tuple[proto_models.ParticipantInfo, proto_models.TrackInfo] | None:
        for p in self.participants.values():
            for t in p.tracks:
                if t.sid == sid:
                    return p, t
        return None

    async def subscribe(self, track_sid: str, *, on_frame: FrameCallback | None = None,
                        on_end: Callable[[RemoteTrack], None] | None = None) -> RemoteTrack:
        """Ask for a published track; frames go to ``on_frame`` once its m-line is there."""
        found = self.find_track(track_sid)
        if found is None:
            raise KeyError(f"no published track {track_sid}")
        part, info = found
        kind = track_kind(info)
        if kind is None:
            raise ValueError(f"track {track_sid} is neither audio nor video")
        track = RemoteTrack(track_sid, kind, part.identity, part.sid, _SOURCES.get(info.source, "unknown"),
                            info.name, info.mime_type, on_frame, on_end)
        self.tracks[track_sid] = track
        await self.signal.update_subscription([track_sid], True)
        if kind == "video":
            # A recorder wants the top layer from the first frame: left to itself the server
            # once sent a simulcast H.264 track's 320x180 layer for 2 s, then 640x360, then
            # 1280x720 (1 of 4 runs; asked for its published size: 720p from the first frame).
            await self.signal.update_track_settings([track_sid], width=info.width or 3840, height=info.height or 2160)
        return track

    async def unsubscribe(self, track_sid: str) -> None:
        track = self.tracks.pop(track_sid, None)
        if track is not None:
            fastpath.drain()
            await self.signal.update_subscription([track_sid], False)
            self._end_track(track)

    def clock_for(self, participant_sid: str) -> ParticipantClock:
        return self.clocks.setdefault(participant_sid, ParticipantClock())

    # -- signalling messages -------------------------------------------------------------
    async def _on_message(self, kind: str, msg: Any) -> None:
        if kind == "offer":
            await self._on_offer(msg)
        elif kind == "trickle":
            await self._on_trickle(msg)
        elif kind == "update":
            fastpath.drain()  # (a track may end here: what it sent before is read first)
            for p in msg.participants:
                self._update_participant(p, announce=True)
        elif kind == "subscription_response":
            self._emit("subscription_failed", track_sid=msg.track_sid,
                       error=proto_models.SubscriptionError.Name(msg.err))
        elif kind == "leave":
            log.info("subscriber: the server asked us to leave (%s)",
                     proto_models.DisconnectReason.Name(msg.reason))

    async def _on_offer(self, sd: proto_rtc.SessionDescription) -> None:
        pc = self.pc
        assert pc is not None
        self.offers += 1
        sdp, renamed = _as_vp8(sd.sdp)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        _restore_codecs(pc, renamed)
        self._bind(sd)  # before anything yields: aiortc starts receivers in a task it just scheduled
        await pc.setLocalDescription(await pc.createAnswer())
        for c in self._early_candidates:
            await pc.addIceCandidate(c)
        self._early_candidates.clear()
        await self.signal.send_answer(pc.localDescription.sdp, sd.id)
        task = asyncio.get_running_loop().create_task(self._start_receivers(), name="lkrtc-start")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_receivers(self) -> None:
        """Start the receivers of m-lines just answered, once DTLS is up.

        aiortc starts receivers in a task per remote description; when a second offer
        comes while DTLS is still connecting (the first offer's task is busy), that task
        sees DTLS "connecting" and skips the new m-line's receiver for good. Starting
        them here, with aiortc's own receive parameters (a private method: aiortc has no
        public one), makes that order not matter. ``receive`` runs once per receiver."""
        pc = self.pc
        assert pc is not None
        transports = []
        for tr in pc.getTransceivers():
            rec = tr.receiver
            if not isinstance(rec, EncodedReceiver):
                continue
            transports.append(rec.transport)
            if rec.started or tr.currentDirection not in ("recvonly", "sendrecv"):
                continue
            dtls = rec.transport
            deadline = time.monotonic() + self.signal.connect_timeout
            while dtls.state in ("new", "connecting") and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if dtls.state == "connected" and not rec.started and tr.receiver is rec:
                await rec.receive(pc._RTCPeerConnection__remoteRtp(tr))  # type: ignore[attr-defined]
        for dtls in {id(t): t for t in transports}.values():  # (one, bundled)
            if dtls.state == "connected" and fastpath.ENABLED:
                fastpath.install(dtls, self.poll)

    async def _on_trickle(self, req: proto_rtc.TrickleRequest) -> None:
        if req.target != SUBSCRIBER or self.pc is None:
            return
        init = json.loads(req.candidateInit or "{}")
        text = init.get("candidate") or ""
        if not text:
            return
        c = candidate_from_sdp(text.split(":", 1)[1] if text.startswith("candidate:") else text)
        c.sdpMid = init.get("sdpMid")
        c.sdpMLineIndex = init.get("sdpMLineIndex")
        if self.pc.remoteDescription is None:
            self._early_candidates.append(c)
        else:
            await self.pc.addIceCandidate(c)

    def _bind(self, sd: proto_rtc.SessionDescription) -> None:
        """Give every transceiver an EncodedReceiver for the track its m-line carries."""
        assert self.pc is not None
        mids = dict(sd.mid_to_track_id)
        if not mids:
            for m in SessionDescription.parse(sd.sdp).media:
                if m.msid and m.rtp.muxId:
                    mids[m.rtp.muxId] = m.msid.split(" ")[-1].split("|")[-1]
        for tr in self.pc.getTransceivers():
            sid = mids.get(tr.mid or "")
            track = self.tracks.get(sid) if sid else None
            current = tr.receiver
            if isinstance(current, EncodedReceiver) and current.track_sid == sid:
                continue
            rec = install(tr, functools.partial(self._make_receiver, tr.kind, track))
            rec.track_sid = sid
            if isinstance(current, EncodedReceiver):
                asyncio.get_running_loop().create_task(current.stop())

    def _make_receiver(self, kind: str, track: RemoteTrack | None, transport: Any, aio_track: Any,
                       rtcp_ssrc: int) -> EncodedReceiver:
        if track is None:  # not asked for (or no longer wanted): received and dropped, not decoded
            return EncodedReceiver(kind, transport, rtcp_ssrc=rtcp_ssrc, track=aio_track, poll=self.poll)
        t = track
        pclock = self.clock_for(t.participant_sid)

        def on_frame(frame: EncodedFrame) -> None:
            if t.on_frame is not None:
                t.on_frame(t, frame)

        rec = EncodedReceiver(kind, transport, rtcp_ssrc=rtcp_ssrc, track=aio_track, clock=pclock.stream,
                              on_frame=on_frame, on_end=functools.partial(self._end_track, t), poll=self.poll)
        t.receiver = rec
        t.bound.set()
        return rec

    def _end_track(self, track: RemoteTrack) -> None:
        if not track.ended:
            track.ended = True
            if track.on_end is not None:
                track.on_end(track)

    # -- participants ----------------------------------------------------------------------
    def _update_participant(self, p: proto_models.ParticipantInfo, *, announce: bool) -> None:
        if self.join is not None and p.sid == self.join.participant.sid:
            return
        old = self.participants.get(p.sid)
        if p.state == proto_models.ParticipantInfo.State.DISCONNECTED:
            self.participants.pop(p.sid, None)
            if old is not None:
                for t in old.tracks:
                    self._emit("track_unpublished", participant=old, track=t)
                self._emit("participant_left", participant=old)
            return
        if old is not None and p.version and old.version and p.version < old.version:
            return  # an older update than what we know
        self.participants[p.sid] = p
        if not announce:
            return
        if old is None:
            self._emit("participant_joined", participant=p)
        before = {t.sid: t for t in old.tracks} if old is not None else {}
        now = {t.sid: t for t in p.tracks}
        for sid, t in now.items():
            prev = before.get(sid)
            if prev is None:
                self._emit("track_published", participant=p, track=t)
            elif prev.muted != t.muted:
                self._emit("track_muted" if t.muted else "track_unmuted", participant=p, track=t)
        for sid, t in before.items():
            if sid not in now:
                self._emit("track_unpublished", participant=p, track=t)
                track = self.tracks.get(sid)
                if track is not None:
                    self._end_track(track)
