"""RTP payloads to whole encoded frames, without decoding.

``depayload(codec, payload)`` strips the RTP payload format of one packet: Opus as it is,
VP8 and VP9 without their payload descriptors, H.264 as Annex B NAL units (aiortc's
depayloader), AV1 as it is (its OBUs are joined per frame: ``av1``). It also says whether
the packet starts a frame, whether that frame is a key frame, and (VP9) whether it starts
a spatial layer's frame: a VP9 picture of several layers (SVC, as browsers send VP9)
becomes one superframe with its index, as a VP9 decoder and a WebM file take it.

``FrameAssembler`` puts packets back in sequence order and hands out complete frames:
a frame is the packets from one frame start up to the packet with the marker bit (or up to
the next timestamp). A missing packet holds later frames back for ``max_wait`` s, the time
NACK has to bring it back; then the loss is accepted and the hole skipped. With
``keyframes`` (video), the frames after a hole are dropped until a key frame, since a
decoder could not use them: the receiver then asks the sender for one (PLI).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiortc.codecs.h264 import H264PayloadDescriptor

from . import av1
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
    part: bool = False  # starts a spatial layer's frame (VP9): past a frame's first, a new one


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


def vp9_payload(payload: bytes) -> tuple[bytes, bool, bool, bool]:
    """(the VP9 data, starts a layer frame, starts a key picture, starts a layer frame) of
    one packet: its payload descriptor (RFC 9628 section 4.2) skipped. A picture is the
    layer frames of one timestamp: livekit-server forwards all of a key picture's spatial
    layers and, in libwebrtc's L3T3_KEY, only the top one of the others. A key picture
    starts with the base layer (spatial layer 0) not predicted from an earlier picture (P
    clear). Each layer frame after a picture's first becomes a frame of its superframe."""
    n = len(payload)
    if n < 1:
        raise ValueError("VP9 descriptor is too short")
    b0 = payload[0]
    flexible = b0 & 0x10
    pos = 1
    if b0 & 0x80:  # I: a picture id, 7 or 15 bits
        if n < 2:
            raise ValueError("VP9 descriptor has a truncated picture id")
        pos += 2 if payload[1] & 0x80 else 1
    sid = 0
    if b0 & 0x20:  # L: TID U SID D, and TL0PICIDX in non-flexible mode
        if n <= pos:
            raise ValueError("VP9 descriptor has truncated layer indices")
        sid = (payload[pos] >> 1) & 0x07
        pos += 1 if flexible else 2
    if flexible and b0 & 0x40:  # F and P: up to three reference indices, N: one more follows
        for _ in range(3):
            if n <= pos:
                raise ValueError("VP9 descriptor has truncated reference indices")
            more = payload[pos] & 0x01
            pos += 1
            if not more:
                break
    if b0 & 0x02:  # V: the scalability structure
        pos = _vp9_skip_ss(payload, pos)
    if n < pos:
        raise ValueError("VP9 descriptor is truncated")
    begins = bool(b0 & 0x08)  # (a picture's lower layers may not have been forwarded to us)
    return payload[pos:], begins, begins and sid == 0 and not b0 & 0x40, begins


def _vp9_skip_ss(payload: bytes, pos: int) -> int:
    """Where a VP9 payload descriptor's scalability structure at ``pos`` ends."""
    n = len(payload)
    if n <= pos:
        raise ValueError("VP9 descriptor has a truncated scalability structure")
    ss = payload[pos]
    pos += 1
    if ss & 0x10:  # Y: each spatial layer's width and height
        pos += 4 * ((ss >> 5) + 1)
    if ss & 0x08:  # G: the picture group description
        if n <= pos:
            raise ValueError("VP9 descriptor has a truncated picture group")
        count = payload[pos]
        pos += 1
        for _ in range(count):
            if n <= pos:
                raise ValueError("VP9 descriptor has a truncated picture group")
            pos += 1 + ((payload[pos] >> 2) & 0x03)
    return pos


def vp9_superframe(frames: list[bytes]) -> bytes:
    """The frames of one picture (its spatial layers) as one VP9 superframe: the frames
    one after the other, then the index of their sizes (VP9 bitstream spec, Annex B)."""
    if len(frames) == 1:
        return frames[0]
    if len(frames) > 8:
        raise ValueError(f"a VP9 superframe holds 8 frames at most, got {len(frames)}")
    largest = max(len(f) for f in frames)
    mag = 1 if largest < 1 << 8 else 2 if largest < 1 << 16 else 3 if largest < 1 << 24 else 4
    marker = bytes([0xC0 | (mag - 1) << 3 | (len(frames) - 1)])
    return b"".join(frames) + marker + b"".join(len(f).to_bytes(mag, "little") for f in frames) + marker


def depayload(codec: str, payload: bytes) -> tuple[bytes, bool, bool, bool]:
    """(data, starts a frame, starts a key frame, starts another layer of the frame) for
    one packet of ``codec`` ("opus", "vp8", "vp9", "av1", "h264"); raises ValueError for a
    malformed payload. AV1's data is the whole payload: ``av1.temporal_unit`` reads it."""
    if codec == "vp8":
        data, start = vp8_payload(payload)
        return data, start, start and bool(data) and not data[0] & 1, False
    if codec == "vp9":
        return vp9_payload(payload)
    if codec == "av1":  # (the OBUs are put together per frame: FrameAssembler.join)
        start, key = av1.aggregation(payload)
        return payload, start, start and key, False
    if codec == "h264":
        hdesc, data = H264PayloadDescriptor.parse(payload)
        return data, hdesc.first_fragment, _h264_key(payload), False
    return payload, True, True, False


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
        #: how a frame's packets become its data (default: one after the other; AV1's
        #: ``av1.temporal_unit``); ValueError drops the frame
        self.join: Callable[[list[bytes]], bytes] | None = None
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
        if self.join is not None:  # (AV1: OBUs across packets)
            try:
                data = self.join([u.data for u in units])
            except ValueError:
                self.dropped_frames += 1
                if self.keyframes:
                    self.need_key = True
                return None
        elif len(units) == 1:
            data = first.data
        elif any(u.part for u in units[1:]):  # VP9 spatial layers: one superframe
            cuts = [0, *(i for i, u in enumerate(units) if u.part and i), len(units)]
            try:
                data = vp9_superframe([b"".join(u.data for u in units[a:b]) for a, b in zip(cuts, cuts[1:])])
            except ValueError:  # more layers than a superframe can hold: not a picture to keep
                self.dropped_frames += 1
                return None
        else:
            data = b"".join(u.data for u in units)
        frame = EncodedFrame(data, first.timestamp, key, units[-1].arrival, self._lost)
        self._lost = 0
        self.frames += 1
        return frame
