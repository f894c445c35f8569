"""EncodedReceiver: the receive side of one subscribed track, without a decoder.

aiortc's ``RTCRtpReceiver`` reassembles frames and then always decodes them on a thread of
its own, and it rebases RTP timestamps to 0, so neither the encoded frames nor the
timestamps sender reports refer to come out of it. ``EncodedReceiver`` takes its place on
a transceiver (``install``): aiortc's DTLS transport still does ICE, DTLS and SRTP and
routes each RTP/RTCP packet here through the same calls it makes on its own receiver
(``_handle_rtp_packet``, ``_handle_rtcp_packet``, ``_handle_disconnect``, ``receive``).

Here a packet is depayloaded, put in order by a ``FrameAssembler`` and handed out as
whole frames through ``on_frame`` (on the event loop, no thread hop), dated by the
track's ``StreamClock``. Losses are asked again with NACK while the assembler holds the
frames behind them, and given up after ``max_wait``; video then waits for a key frame,
asked for with PLI (at most every ``PLI_INTERVAL`` s, as the sender may throttle them).
Receiver reports go out about every second so that the server sees loss and jitter.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpReceiveParameters
from aiortc.rtp import (
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    AnyRtcpPacket,
    RtcpByePacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
    clamp_packets_lost,
)
from aiortc.stats import RTCStatsReport

from . import av1
from .clock import StreamClock
from .fastpath import POLL_INTERVAL, arrival, tick_at, unwrap_rtx
from .frames import EncodedFrame, FrameAssembler, Unit, depayload, is_blank

log = logging.getLogger("lkmedia.lkrtc.receiver")

CODECS = {"opus": "opus", "vp8": "vp8", "vp9": "vp9", "av1": "av1", "h264": "h264"}  # RTP name (lower case) -> ours
RR_INTERVAL = 1.0
BUSY_TICK = 0.04         # how often holes and NACKs are looked at while there are any
# (the fast path reads the sockets every ``poll`` s (POLL_INTERVAL): a hole is seen, and
# its retransmission read, up to that much later; the figures below add it)
NACK_RETRY = 0.08        # a missing packet is asked again after this long ...
NACK_TRIES = 4           # ... this many times at most
MAX_MISSING = 512        # more missing than this at once: ask for a key frame instead
PLI_INTERVAL = 0.5
VIDEO_MAX_WAIT = 0.5     # how long a hole may hold frames back (NACK's time to repair it)
AUDIO_MAX_WAIT = 0.2

FrameHandler = Callable[[EncodedFrame], None]


class EncodedReceiver:
    """Duck-types aiortc's RTCRtpReceiver for one transceiver (see module doc)."""

    def __init__(self, kind: str, transport: Any, *, rtcp_ssrc: int | None = None,
                 clock: Callable[[int], StreamClock] | None = None, track: Any = None,
                 on_frame: FrameHandler | None = None, on_end: Callable[[], None] | None = None,
                 poll: float = POLL_INTERVAL) -> None:
        self.kind = kind
        self.track_sid: str | None = None    # the LiveKit track this m-line carries
        self._transport = transport
        self._rtcp_ssrc = rtcp_ssrc
        self._make_clock = clock or (lambda rate: StreamClock(rate))
        self._track = track
        self._enabled = True
        self.on_frame = on_frame
        self.on_end = on_end
        self.codec: str | None = None        # "opus", "vp8", "vp9", "av1", "h264"
        self.clock_rate = 90_000
        self.clock: StreamClock | None = None
        self.ssrc: int | None = None         # the media SSRC (not RTX)
        self._codecs: dict[int, RTCRtpCodecParameters] = {}
        self._names: dict[int, str] = {}     # payload type -> codec name, lower case
        self._rtx: dict[int, int] = {}       # RTX SSRC -> media SSRC
        self._nack = False
        self._asm = FrameAssembler(every_packet=kind == "audio", keyframes=kind == "video",
                                   max_wait=(VIDEO_MAX_WAIT if kind == "video" else AUDIO_MAX_WAIT) + poll)
        self._nack_retry = NACK_RETRY + poll
        self._missing: dict[int, list[float]] = {}  # ext seq -> [last asked, tries]
        self._last_high: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._started = False
        self._ended = False
        self._last_pli = -1e9
        self._dropped_seen = 0
        # receiver-report figures
        self._base_seq: int | None = None
        self._received = 0
        self._expected_prior = 0
        self._received_prior = 0
        self._jitter = 0.0
        self._transit: float | None = None
        self._lsr = 0
        self._lsr_at = 0.0
        # counters
        self.packets = 0
        self.rtx_packets = 0
        self.bad_packets = 0
        self.frames = 0
        self.nacks_sent = 0
        self.plis_sent = 0
        self.sender_reports = 0
        self.blank_frames = 0

    def request_keyframe(self) -> None:
        """Video: drop frames until a key frame comes, and ask the sender for one (PLI,
        repeated while none comes). For a consumer that could not use a frame it was given."""
        if self._asm.keyframes:
            self._asm.need_key = True
            self._asm.dropped_frames += 1  # (counts as refused: the next PLI goes out at once)
            self._wake.set()

    # -- what aiortc's transceiver and peer connection use -----------------------
    @property
    def started(self) -> bool:
        return self._started

    @property
    def track(self) -> Any:
        return self._track

    @property
    def transport(self) -> Any:
        return self._transport

    def setTransport(self, transport: Any) -> None:  # noqa: N802 (aiortc's name)
        self._transport = transport

    def _set_rtcp_ssrc(self, ssrc: int) -> None:
        self._rtcp_ssrc = ssrc

    async def getStats(self) -> RTCStatsReport:  # noqa: N802 (aiortc's name)
        return RTCStatsReport()

    async def receive(self, parameters: RTCRtpReceiveParameters) -> None:
        if self._started:
            return
        for codec in parameters.codecs:
            assert codec.payloadType is not None
            self._codecs[codec.payloadType] = codec
            self._names[codec.payloadType] = codec.name.lower()  # (a property that splits the MIME type)
        if not any(name in CODECS for name in self._names.values()):
            raise ValueError(f"no codec we can receive among {[str(c) for c in parameters.codecs]}")
        for enc in parameters.encodings:
            if enc.rtx:
                self._rtx[enc.rtx.ssrc] = enc.ssrc
        self._transport._register_rtp_receiver(self, parameters)
        self._task = asyncio.get_running_loop().create_task(self._run_rtcp(), name=f"lkrtc-rtcp-{self.kind}")
        self._started = True

    async def stop(self) -> None:
        if self._started:
            self._transport._unregister_rtp_receiver(self)
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        self._end()

    def _handle_disconnect(self) -> None:
        self._end()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            if self.on_end is not None:
                self.on_end()

    # -- RTCP in ---------------------------------------------------------------
    async def _handle_rtcp_packet(self, packet: AnyRtcpPacket) -> None:
        if isinstance(packet, RtcpSrPacket):
            self.sender_reports += 1
            info = packet.sender_info
            self._lsr = (info.ntp_timestamp >> 16) & 0xFFFFFFFF
            self._lsr_at = time.monotonic()
            if self.clock is not None and packet.ssrc == self.ssrc:  # (after the first packet)
                self.clock.sender_report(info.ntp_timestamp, info.rtp_timestamp)
        elif isinstance(packet, RtcpByePacket) and self.ssrc in packet.sources:
            self._end()

    # -- RTP in ----------------------------------------------------------------
    def _media(self, packet: Any) -> Any:
        """The media packet (an RTX one unwrapped) of this track's codec, else None."""
        name = self._names.get(packet.payload_type)
        if name is None:
            return None
        if name == "rtx":
            codec = self._codecs[packet.payload_type]
            apt = codec.parameters.get("apt")
            media_ssrc = self._rtx.get(packet.ssrc, self.ssrc)
            if len(packet.payload) < 2 or not isinstance(apt, int) or apt not in self._codecs or media_ssrc is None:
                return None
            packet = unwrap_rtx(packet, payload_type=apt, ssrc=media_ssrc)
            name = self._names[apt]
            self.rtx_packets += 1
        elif self.ssrc is None:
            self.ssrc = packet.ssrc
        elif packet.ssrc != self.ssrc:
            return None  # a second stream on one receiver: not ours to mix in
        if self.codec is None:
            # the server offers every codec of the room and sends the one published: what
            # the first packet carries is the track's codec
            if name not in CODECS:
                return None
            self._start_codec(self._codecs[packet.payload_type])
        elif CODECS.get(name) != self.codec:
            self.bad_packets += 1
            return None
        return packet

    async def _handle_rtp_packet(self, packet: Any, arrival_time_ms: int) -> None:
        """aiortc's way in (until ``fastpath.install``): as ``handle_rtp``."""
        self.handle_rtp(packet)

    def handle_rtp(self, packet: Any) -> None:
        """One RTP packet (``fastpath.Rtp`` or aiortc's ``RtpPacket``), on the event loop."""
        if not self._enabled or self._ended:
            return
        media = self._media(packet)
        if media is None:
            return
        packet = media
        now = arrival()  # (when it arrived, not when the poll read it)
        self.packets += 1
        asm = self._asm
        seq = asm.extend(packet.sequence_number)
        self._count(seq, packet.timestamp, now)
        if self._nack:
            self._note_seq(seq)
        if packet.payload:
            try:
                data, start, key, part = depayload(self.codec or "", packet.payload)
            except ValueError:
                self.bad_packets += 1
                data, start, key, part = b"", False, False, False
        else:
            data, start, key, part = b"", False, False, False  # padding (the server's bandwidth probes)
        frames = asm.push(Unit(seq, packet.timestamp, bool(packet.marker), start, key, data, now, part))
        for f in frames:
            self._deliver(f)
        if asm.stalled or (asm.need_key and asm.dropped_frames != self._dropped_seen):
            self._wake.set()

    def _start_codec(self, codec: RTCRtpCodecParameters) -> None:
        self.codec, self.clock_rate = CODECS[codec.name.lower()], codec.clockRate
        if self.codec == "av1":
            self._asm.join = av1.temporal_unit
        self._nack = any(fb.type == "nack" and not fb.parameter for fb in codec.rtcpFeedback)
        self.clock = self._make_clock(self.clock_rate)

    def _deliver(self, frame: EncodedFrame) -> None:
        assert self.clock is not None
        if is_blank(self.codec or "", frame.data):
            # the server's stand-in (mute, close): dropped; video then needs a real key frame
            self.blank_frames += 1
            if self.kind == "video":
                self._asm.need_key = True
            return
        frame.time = self.clock.time(frame.timestamp, frame.arrival)
        self.frames += 1
        if self.on_frame is not None:
            self.on_frame(frame)

    def _count(self, seq: int, ts: int, now: float) -> None:
        if self._base_seq is None:
            self._base_seq = seq
        self._received += 1
        transit = now * self.clock_rate - ts
        if self._transit is not None:
            d = abs(transit - self._transit)
            if d < self.clock_rate:  # not across a timestamp jump
                self._jitter += (d - self._jitter) / 16
        self._transit = transit

    def _note_seq(self, seq: int) -> None:
        """Note the packets a new one shows missing; the RTCP task asks for them at once."""
        missing = self._missing
        if missing:
            missing.pop(seq, None)
        last = self._last_high
        if last is not None and seq <= last:
            return  # late, or a retransmission
        self._last_high = seq
        if last is None or seq == last + 1:
            return
        new = list(range(last + 1, seq))
        if len(new) + len(missing) > MAX_MISSING:
            missing.clear()  # too much to ask again: the assembler gives it up
            return
        for s in new:
            missing[s] = [0.0, 0]  # (never asked: due now)
        self._wake.set()

    # -- RTCP out --------------------------------------------------------------
    async def _run_rtcp(self) -> None:
        next_rr = time.monotonic() + RR_INTERVAL
        while True:
            asm = self._asm
            now = time.monotonic()
            if self._missing or asm.stalled:
                delay = BUSY_TICK
            else:  # (waiting for a key frame: ask again every PLI_INTERVAL at most)
                delay = max(0.0, min(next_rr - now, PLI_INTERVAL if asm.need_key else RR_INTERVAL))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(tick_at(delay)):  # (in a poll's wake-up)
                    await self._wake.wait()  # (set while this task was sending: at once)
            self._wake.clear()
            now = time.monotonic()
            for f in asm.expire(now):
                self._deliver(f)
            await self._resend_nacks(now)
            await self._maybe_pli(now)
            if now >= next_rr:
                await self._send_rr(now)
                next_rr = now + RR_INTERVAL * (0.5 + random.random())

    async def _resend_nacks(self, now: float) -> None:
        if not self._missing:
            return
        head = self._asm.head
        again = []
        for s, st in list(self._missing.items()):
            if (head is not None and s < head) or st[1] >= NACK_TRIES:
                del self._missing[s]  # given up (or the assembler moved past it)
            elif now - st[0] >= self._nack_retry:
                again.append(s)
        if again:
            await self._send_nack(again, now)

    async def _send_nack(self, seqs: list[int], now: float) -> None:
        if self._rtcp_ssrc is None or self.ssrc is None:
            return
        for s in seqs:
            st = self._missing.get(s)
            if st is not None:
                st[0], st[1] = now, st[1] + 1
        pkt = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=self._rtcp_ssrc, media_ssrc=self.ssrc)
        pkt.lost = sorted(s & 0xFFFF for s in seqs)
        self.nacks_sent += 1
        await self._send_rtcp(pkt)

    async def _maybe_pli(self, now: float) -> None:
        asm = self._asm
        if not asm.need_key or self.ssrc is None or self._rtcp_ssrc is None:
            return
        # a frame was refused for want of a key frame (or one is still awaited)
        if asm.dropped_frames == self._dropped_seen and now - self._last_pli < 2 * PLI_INTERVAL:
            return
        if now - self._last_pli < PLI_INTERVAL:
            return
        self._dropped_seen = asm.dropped_frames
        self._last_pli = now
        self.plis_sent += 1
        await self._send_rtcp(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=self._rtcp_ssrc, media_ssrc=self.ssrc))

    async def _send_rr(self, now: float) -> None:
        if self._rtcp_ssrc is None or self.ssrc is None or self._base_seq is None:
            return
        high = self._asm.highest or self._base_seq
        expected = high - self._base_seq + 1
        exp_int, rec_int = expected - self._expected_prior, self._received - self._received_prior
        self._expected_prior, self._received_prior = expected, self._received
        lost_int = exp_int - rec_int
        fraction = (lost_int << 8) // exp_int if exp_int > 0 and lost_int > 0 else 0
        dlsr = int((now - self._lsr_at) * 65536) if self._lsr else 0
        report = RtcpReceiverInfo(ssrc=self.ssrc, fraction_lost=min(fraction, 255),
                                  packets_lost=clamp_packets_lost(expected - self._received),
                                  highest_sequence=high & 0xFFFFFFFF, jitter=int(self._jitter),
                                  lsr=self._lsr, dlsr=dlsr)
        await self._send_rtcp(RtcpRrPacket(ssrc=self._rtcp_ssrc, reports=[report]))

    async def _send_rtcp(self, packet: Any) -> None:
        try:
            await self._transport._send_rtp(bytes(packet))
        except ConnectionError:
            pass

    # -- figures -----------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        asm = self._asm
        return {"codec": self.codec, "packets": self.packets, "rtx": self.rtx_packets,
                "frames": self.frames, "lost_packets": asm.lost_packets,
                "dropped_frames": asm.dropped_frames, "late": asm.late, "bad": self.bad_packets,
                "blank": self.blank_frames, "nacks": self.nacks_sent, "plis": self.plis_sent, "sender_reports": self.sender_reports,
                "clock_shifts": self.clock.shifts if self.clock else 0}


def install(transceiver: Any, make: Callable[[Any, Any, int], EncodedReceiver]) -> EncodedReceiver:
    """Put ``make(dtls_transport, aiortc_track, rtcp_ssrc)`` in place of the receiver of
    ``transceiver`` (aiortc's own, or an EncodedReceiver bound to another track).

    Call it right after ``setRemoteDescription`` returned and before yielding to the
    loop: aiortc has then only scheduled the task that starts receivers, and that task
    reads ``transceiver.receiver`` when it runs. aiortc has no public hook for this: its
    transceiver keeps the receiver in a private attribute.
    """
    old = transceiver.receiver
    new = make(old.transport, old.track, transceiver.sender._ssrc)
    transceiver._RTCRtpTransceiver__receiver = new
    return new
