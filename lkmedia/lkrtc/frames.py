"""RTP payloads to whole encoded frames, without decoding.

``depayload(codec, payload)`` strips the RTP payload format of one packet: Opus as it is,
VP8 without its payload descriptor, H.264 as Annex B NAL units (aiortc's depayloaders). It
also says whether the packet starts a frame and whether that frame is a key frame.

``FrameAssembler`` puts packets back in sequence order and hands out complete frames:
a frame is the packets from one frame start up to the packet with the marker bit (or up to
the next timestamp). A missing packet holds later frames back for ``max_wait`` s, the time
NACK has to bring it back; then the loss is accepted and the hole skipped. With
``keyframes`` (video), the frames after a hole are dropped until a key frame, since a
decoder could not use them: the receiver then asks the sender for one (PLI).
"""
from __future__ import annotations

from dataclasses import dataclass

from aiortc.codecs.h264 import H264PayloadDescriptor

from .clock import unwrap

H264_IDR = 5
H264_SPS = 7
H264_STAP_A = 24
H264_FU_A = 28


@dataclass(slots=True)
class Unit:
    """One depayloaded RTP packet."""

    seq: int            # extended (unwrapped) sequence number
    timestamp: int      # 32-bit RTP timestamp
    marker: bool
    start: bool         # the first packet of a frame
    key: bool           # ... of a key frame
    data: bytes
    arrival: float


@dataclass(slots=True)
class EncodedFrame:
    """One whole frame as the publisher encoded it."""

    data: bytes
    timestamp: int      # 32-bit RTP timestamp
    keyframe: bool
    arrival: float      # when its last packet arrived (time.monotonic())
    lost_before: int = 0  # packets given up just before this frame
    time: float = 0.0   # local time of its capture (set by the receiver's clock)


# What livekit-server sends in a track's place for a moment when its publisher mutes
# (1 s) or when the track closes (0.2 s), "to flush the decoder" (livekit
# pkg/sfu/downtrack.go: VP8KeyFrame8x8, H264KeyFrame2x2, OpusSilenceFrame): not the
# publisher's media, and an 8x8 picture in the middle of a recording.
_BLANK = {
    "vp8": bytes.fromhex("1002009d012a0800080000470885858885848802 02000c0d6000feffab5080".replace(" ", "")),
    "h264": b"".join(b"\x00\x00\x00\x01" + bytes.fromhex(n) for n in (
        "6742c01f0fd91f888884000003000400000300c83c60c920", "6887cb83cb20", "658884 0af2628000a7be".replace(" ", ""))),
    "opus": bytes.fromhex("f8fffe") + bytes(77),
}


def is_blank(codec: str, data: bytes) -> bool:
    """Whether a frame is one of livekit-server's stand-in frames (see _BLANK)."""
    return data == _BLANK.get(codec)


def _h264_key(payload: bytes) -> bool:
    """Whether a packet carries the start of an IDR slice or an SPS."""
    nal = payload[0] & 0x1F
    if nal == H264_FU_A:
        return len(payload) > 1 and bool(payload[1] & 0x80) and (payload[1] & 0x1F) in (H264_IDR, H264_SPS)
    if nal == H264_STAP_A:
        pos = 1
        while pos + 2 < len(payload):
            size = (payload[pos] << 8) | payload[pos + 1]
            if (payload[pos + 2] & 0x1F) in (H264_IDR, H264_SPS):
                return True
            pos += 2 + size
        return False
    return nal in (H264_IDR, H264_SPS)


def vp8_payload(payload: bytes) -> tuple[bytes, bool]:
    """(the VP8 data, starts a frame) of one packet: its payload descriptor (RFC 7741
    section 4.2) skipped. What aiortc's ``VpxPayloadDescriptor.parse`` reads, without
    building the descriptor (this runs for every video packet)."""
    n = len(payload)
    if n < 1:
        raise ValueError("VPX descriptor is too short")
    b0 = payload[0]
    pos = 1
    if b0 & 0x80:  # X: extended control bits
        if n < 2:
            raise ValueError("VPX descriptor has truncated extended bits")
        x = payload[1]
        pos = 2
        if x & 0x80:  # I: a picture id, 7 or 15 bits
            if n < 3 or (payload[2] & 0x80 and n < 4):
                raise ValueError("VPX descriptor has truncated PictureID")
            pos += 2 if payload[2] & 0x80 else 1
        if x & 0x40:  # L: TL0PICIDX
            pos += 1
        if x & 0x30:  # T or K: one byte for both
            pos += 1
        if n < pos:
            raise ValueError("VPX descriptor is truncated")
    return payload[pos:], (b0 & 0x1F) == 0x10  # S set, partition 0


def depayload(codec: str, payload: bytes) -> tuple[bytes, bool, bool]:
    """(data, starts a frame, starts a key frame) for one packet of ``codec``
    ("opus", "vp8", "h264"); raises ValueError for a malformed payload."""
    if codec == "vp8":
        data, start = vp8_payload(payload)
        return data, start, start and bool(data) and not data[0] & 1
    if codec == "h264":
        hdesc, data = H264PayloadDescriptor.parse(payload)
        return data, hdesc.first_fragment, _h264_key(payload)
    return payload, True, True


def vp8_size(frame: bytes) -> tuple[int, int] | None:
    """Width and height from a VP8 key frame's header."""
    if len(frame) < 10 or frame[0] & 1 or frame[3:6] != b"\x9d\x01\x2a":
        return None
    return (frame[6] | frame[7] << 8) & 0x3FFF, (frame[8] | frame[9] << 8) & 0x3FFF


class FrameAssembler:
    """Packets in any order in, whole frames in order out (see module doc).

    ``every_packet`` (audio): each packet is a frame of its own.
    """

    def __init__(self, *, every_packet: bool = False, keyframes: bool = False,
                 max_wait: float = 0.3, capacity: int = 2048) -> None:
        self.every_packet = every_packet
        self.keyframes = keyframes
        self.max_wait = max_wait
        self.capacity = capacity
        self.need_key = keyframes       # nothing usable until a key frame
        self._pending: dict[int, Unit] = {}
        self._head: int | None = None   # the sequence number the next frame starts at
        self._scan: int | None = None   # checked present from head up to here (same frame)
        self._highest: int | None = None
        self._stalled_at: float | None = None  # when a hole first held frames back
        self._lost = 0                  # packets given up since the last frame handed out
        self._waiting_start = False     # the first packets are not a frame's start (yet)
        self._start_gone = False
        self.frames = 0
        self.lost_packets = 0
        self.dropped_frames = 0         # complete or not, not handed out (waiting for a key frame)
        self.late = 0                   # packets that came after their place was given up

    def extend(self, seq: int) -> int:
        """The extended sequence number of 16-bit ``seq``."""
        ext = unwrap(seq, self._highest, 16)
        if self._highest is None or ext > self._highest:
            self._highest = ext
        return ext

    @property
    def head(self) -> int | None:
        """The sequence number the next frame starts at."""
        return self._head

    @property
    def highest(self) -> int | None:
        return self._highest

    @property
    def stalled(self) -> bool:
        """A hole holds frames back (the receiver then checks ``expire`` on a timer)."""
        return self._stalled_at is not None

    def push(self, unit: Unit) -> list[EncodedFrame]:
        head = self._head
        if head is None:
            self._head = self._scan = unit.seq
        elif unit.seq in self._pending:
            self.late += 1
            return []
        elif unit.seq < head:
            if self.frames or self.dropped_frames or head - unit.seq > self.capacity:
                self.late += 1
                return []
            self._head = self._scan = unit.seq  # the stream's first packets came late (resent)
        self._pending[unit.seq] = unit
        if self._highest is None or unit.seq > self._highest:
            self._highest = unit.seq
        out = self._take(unit.arrival)
        if self._pending and (len(self._pending) > self.capacity or self._overdue(unit.arrival)):
            out += self._skip_hole(unit.arrival)
        return out

    def expire(self, now: float) -> list[EncodedFrame]:
        """Give up a hole that has held frames back longer than max_wait."""
        return self._skip_hole(now) if self._overdue(now) else []

    def _overdue(self, now: float) -> bool:
        return self._stalled_at is not None and now - self._stalled_at > self.max_wait

    def _skip_hole(self, now: float) -> list[EncodedFrame]:
        """Accept the loss at the first missing packet: drop what came of its frame and
        go on from the next packet that did arrive."""
        assert self._head is not None and self._scan is not None
        if self._waiting_start:  # the start never came: take what is here (it is dropped)
            self._waiting_start, self._start_gone, self._stalled_at = False, True, None
            return self._take(now)
        missing = self._scan if not self.every_packet else self._head
        later = [s for s in self._pending if s > missing]
        if not later:
            self._stalled_at = None
            return []
        nxt = min(later)
        gone = nxt - self._head
        for s in range(self._head, nxt):
            if self._pending.pop(s, None) is not None:
                gone -= 1
        if self._head < missing:
            self.dropped_frames += 1  # the broken frame's packets before the hole
        self._lost += gone
        self.lost_packets += gone
        self._head = self._scan = nxt
        self._stalled_at = None
        if self.keyframes:
            self.need_key = True
        return self._take(now)

    def _take(self, now: float) -> list[EncodedFrame]:
        out: list[EncodedFrame] = []
        pending = self._pending
        head = self._head
        self._waiting_start = False
        while pending:
            assert self._head is not None
            first = pending.get(self._head)
            if first is None:
                self._scan = self._head
                break
            if not first.data and not first.start:  # padding: no media, only a number
                del pending[self._head]
                self._head = self._scan = self._head + 1
                continue
            if not first.start and not self.frames and not self.dropped_frames and not self._start_gone:
                # the first packets seen are not a frame's start: the start may come late
                # (lost, then resent), so wait for it as for a hole, max_wait at most
                self._waiting_start = True
                break
            end = self._frame_end(first)
            if end is None:
                break
            units = [pending.pop(s) for s in range(self._head, end + 1)]
            self._head = self._scan = end + 1
            frame = self._frame(units)
            if frame is not None:
                out.append(frame)
        if self._head != head:
            self._stalled_at = None
        # a hole: a packet is missing while a later one is here
        hole = bool(pending) and (self._waiting_start or (
            self._highest is not None and self._scan is not None and self._highest > self._scan))
        if not hole:
            self._stalled_at = None
        elif self._stalled_at is None:
            self._stalled_at = now
        return out

    def _frame_end(self, first: Unit) -> int | None:
        """The sequence number of the frame's last packet, or None while one is missing
        (``_scan`` then is the first missing one)."""
        if self.every_packet:
            return first.seq
        assert self._scan is not None
        s = max(self._scan, first.seq)
        pending = self._pending
        while True:
            u = pending.get(s)
            if u is None:
                self._scan = s
                return None
            if u.timestamp != first.timestamp:
                return s - 1  # the next frame began: this one had no marker
            if u.marker:
                return s
            s += 1

    def _frame(self, units: list[Unit]) -> EncodedFrame | None:
        first = units[0]
        whole = first.start
        key = whole and first.key
        if not whole or (self.need_key and not key):
            self.dropped_frames += 1
            if self.keyframes:
                self.need_key = True
            return None
        if key:
            self.need_key = False
        data = first.data if len(units) == 1 else b"".join(u.data for u in units)
        frame = EncodedFrame(data, first.timestamp, key, units[-1].arrival, self._lost)
        self._lost = 0
        self.frames += 1
        return frame
