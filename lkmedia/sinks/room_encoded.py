"""Video passthrough into a room: encoded H.264 (or VP8) packets published as they came,
through the SDK's ``EncodedVideoSource`` (libwebrtc packetises them, encodes nothing).

H.264 is handed over as Annex B (an MP4/FLV stream's length-prefixed NAL units are
rewritten by FFmpeg's ``h264_mp4toannexb``, which adds SPS/PPS before key frames). WebRTC
carries no composition offset, so a stream with B-frames cannot pass: it is refused, in
plain words, at its first reordered frame. Key-frame requests from the room cannot reach
an RTMP publisher's encoder: they are counted (``keyframe_requests``), and a subscriber
that joins waits for the publisher's next key frame (its GOP).
"""
from __future__ import annotations

import logging
from typing import Any

import av
from av.bitstream import BitStreamFilterContext
from livekit import rtc

from ..core import LkmediaError

log = logging.getLogger("lkmedia.sinks.room")

_CODECS = {"h264": rtc.VideoCodec.H264, "vp8": rtc.VideoCodec.VP8}
PASSTHROUGH_CODECS = tuple(_CODECS)


class PassthroughError(LkmediaError):
    """The encoded video cannot go into the room as it is."""


def is_key(data: bytes, codec: str) -> bool:
    """Whether an access unit starts a picture that needs no other (from the bitstream
    itself: a container's key-frame flag is not always set). H.264 (Annex B): an IDR slice;
    VP8: the frame tag's key bit (0)."""
    if codec == "vp8":
        return bool(data) and not data[0] & 1
    i = data.find(b"\x00\x00\x01")
    while i != -1 and i + 3 < len(data):
        if data[i + 3] & 0x1F == 5:
            return True
        i = data.find(b"\x00\x00\x01", i + 3)
    return False


class EncodedVideo:
    """One published pre-encoded video track: ``track()`` to publish, ``send(packet)`` per
    access unit in decode order."""

    def __init__(self, first: av.Packet) -> None:
        stream = first.stream
        codec = stream.codec_context.name if stream is not None else None
        if codec not in _CODECS:
            raise PassthroughError(f"video codec {codec} cannot be passed through into a room "
                                   f"(passthrough takes {', '.join(sorted(_CODECS))}); transcode it instead")
        self.codec = codec
        cc = stream.codec_context
        self.width, self.height = cc.width or 0, cc.height or 0
        if self.width <= 0 or self.height <= 0:
            raise PassthroughError("the encoded video does not say its size; transcode it instead")
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else 30.0
        self.source = rtc.EncodedVideoSource(self.width, self.height)
        self._bsf = BitStreamFilterContext("h264_mp4toannexb", in_stream=stream) if codec == "h264" else None
        self._last_pts: int | None = None
        self.frames = 0
        self.rejected = 0
        self.keyframe_requests = 0
        self._next_feedback = 0

    def track(self, name: str, source: rtc.TrackSource.ValueType, max_bitrate: int
              ) -> tuple[rtc.LocalVideoTrack, rtc.TrackPublishOptions]:
        track = rtc.LocalVideoTrack.create_video_track(name, self.source)
        opts = rtc.TrackPublishOptions(source=source, video_codec=_CODECS[self.codec], simulcast=False,
                                       video_encoder=rtc.VideoEncoderBackend.ENCODER_BACKEND_PRE_ENCODED)
        opts.video_encoding.max_bitrate = max_bitrate
        opts.video_encoding.max_framerate = self.fps
        return track, opts

    def send(self, packet: av.Packet) -> None:
        """Publish one access unit (``packet.pts`` in its stream's time base)."""
        if packet.pts is None or packet.time_base is None or packet.size == 0:
            return
        if self._last_pts is not None and packet.pts < self._last_pts:
            raise PassthroughError("the video has B-frames (frames out of display order), which WebRTC cannot "
                                   "carry: publish without them (x264: -bf 0) or transcode")
        self._last_pts = packet.pts
        ts = int(packet.pts * packet.time_base * 1_000_000)
        units = self._bsf.filter(packet) if self._bsf is not None else [packet]
        for unit in units:
            data = bytes(unit)
            frame = rtc.EncodedVideoFrame(
                data=data, width=self.width, height=self.height, codec=_CODECS[self.codec],
                frame_type=rtc.EncodedFrameType.ENCODED_FRAME_KEY if is_key(data, self.codec)
                else rtc.EncodedFrameType.ENCODED_FRAME_DELTA,
                timestamp_us=ts)
            if self.source.capture_frame(frame):
                self.frames += 1
            else:
                self.rejected += 1
        if self.frames >= self._next_feedback:  # (an FFI round trip: twice a second is enough to count them)
            self._next_feedback = self.frames + max(1, round(self.fps / 2))
            if self.source.take_feedback().keyframe_requested:
                self.keyframe_requests += 1  # the publisher's encoder is out of reach: wait for its GOP

    def stats(self) -> dict[str, Any]:
        return {"frames": self.frames, "rejected": self.rejected, "keyframe_requests": self.keyframe_requests}
