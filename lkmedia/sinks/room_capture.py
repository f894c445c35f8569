"""Handing PyAV frames to the SDK's sources without the SDK's per-frame costs.

``rtc.VideoSource.capture_frame`` takes packed I420 (planes back to back), so a decoded
PyAV frame had to be copied whole into a new buffer first, and the FFI then copies it
again into libwebrtc's buffer. The FFI's request reads each plane through its own pointer
and stride (livekit-ffi's ``to_libwebrtc_buffer``), so here the PyAV planes go in as they
are: one copy, made by the FFI before the call returns.

``rtc.AudioSource.capture_frame`` costs ~0.26 ms of CPU per call (a future, a timer, a
queue subscription and a callback across threads each time; 100 calls a second for 10 ms
chunks make 0.026 core, a tenth of an ingress session). The FFI copies the samples before
its request returns (livekit-ffi's ``capture_frame`` takes ``to_vec()`` before it spawns),
so ``DirectAudio`` hands each chunk over and does not wait for its callback: ~0.08 ms a
call. A failed capture still comes back, through one subscription that lets only
failures through; the next capture raises it.

Both use the SDK's request types and its sources' FFI handles (``_ffi_handle``, not public
API); where those are missing they fall back to the SDK's own calls.
"""
from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import av
import numpy as np
from livekit import rtc
from livekit.rtc._ffi_client import FfiClient
from livekit.rtc._proto import audio_frame_pb2 as proto_audio
from livekit.rtc._proto import ffi_pb2 as proto_ffi
from livekit.rtc._proto import video_frame_pb2 as proto_video


def _handle(source: Any) -> int | None:
    h = getattr(getattr(source, "_ffi_handle", None), "handle", None)
    return h if isinstance(h, int) else None


def to_rtc_video(frame: av.VideoFrame) -> rtc.VideoFrame:
    """A yuv420p av frame as a packed I420 rtc frame (planes back to back, no padding):
    what the SDK's public capture takes (the fallback, and the dev publisher's frames)."""
    if frame.format.name != "yuv420p":
        frame = frame.reformat(format="yuv420p")
    w, h = frame.width, frame.height
    cw, ch = (w + 1) // 2, (h + 1) // 2
    out = np.empty(w * h + 2 * cw * ch, np.uint8)  # (every byte is written below: no zero fill)
    off = 0
    for i, (pw, ph) in enumerate(((w, h), (cw, ch), (cw, ch))):
        plane = frame.planes[i]
        src = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:ph, :pw]  # type: ignore[call-overload]  # (a PyAV plane is a buffer)
        out[off : off + pw * ph].reshape(ph, pw)[:] = src
        off += pw * ph
    return rtc.VideoFrame(w, h, rtc.VideoBufferType.I420, out.data)


def capture_video(source: rtc.VideoSource, frame: av.VideoFrame) -> None:
    """``frame`` into ``source``, its planes read in place (any stride)."""
    handle = _handle(source)
    if handle is None:
        source.capture_frame(to_rtc_video(frame))
        return
    if frame.format.name != "yuv420p":
        frame = frame.reformat(format="yuv420p")
    req = proto_ffi.FfiRequest()
    cap = req.capture_video_frame
    cap.source_handle = handle
    cap.rotation = proto_video.VideoRotation.VIDEO_ROTATION_0
    cap.timestamp_us = 0  # (0: libwebrtc stamps it with its capture time, as the SDK's call does by default)
    info = cap.buffer
    info.type = proto_video.VideoBufferType.I420
    info.width, info.height = frame.width, frame.height
    rows = (frame.height, (frame.height + 1) // 2, (frame.height + 1) // 2)
    for plane, n in zip(frame.planes, rows, strict=True):
        c = info.components.add()
        c.data_ptr, c.stride, c.size = plane.buffer_ptr, plane.line_size, plane.line_size * n
    info.data_ptr = frame.planes[0].buffer_ptr
    FfiClient.instance.request(req)  # (the FFI has copied the planes when this returns)


class DirectAudio:
    """Packed s16 chunks of exactly 10 ms into an unqueued ``rtc.AudioSource``
    (``queue_size_ms=0``), each handed over without awaiting its callback.

    ``room``: the ``rtc.Room`` the source's track is published in. Its listener subscribes
    to every FFI event but stream frames, so each capture's callback would wake the event
    loop to be dropped there (100 wake-ups a second); that listener is told to skip them."""

    def __init__(self, source: rtc.AudioSource, room: rtc.Room | None = None) -> None:
        self.source = source
        self._handle = _handle(source)
        self._failures: Any = None
        if self._handle is not None and room is not None:
            _skip_capture_callbacks(room)
        if self._handle is not None:
            self._failures = FfiClient.instance.queue.subscribe(
                asyncio.get_running_loop(),
                filter_fn=lambda e: e.WhichOneof("message") == "capture_audio_frame"
                and bool(e.capture_audio_frame.error))

    async def capture(self, chunk: av.AudioFrame) -> None:
        if chunk.format.name != "s16":
            raise ValueError(f"expected packed s16 audio, got {chunk.format.name}")
        if self._handle is None:
            await self.source.capture_frame(to_rtc_audio(chunk))
            return
        if self._failures is not None and not self._failures.empty():
            raise RuntimeError(f"libwebrtc refused audio: {self._failures.get_nowait().capture_audio_frame.error}")
        req = proto_ffi.FfiRequest()
        cap = req.capture_audio_frame
        cap.source_handle = self._handle
        buf: proto_audio.AudioFrameBufferInfo = cap.buffer
        buf.data_ptr = chunk.planes[0].buffer_ptr
        buf.sample_rate = chunk.sample_rate
        buf.num_channels = len(chunk.layout.channels)
        buf.samples_per_channel = chunk.samples
        FfiClient.instance.request(req)  # (the FFI has copied the samples when this returns)

    def close(self) -> None:
        if self._failures is not None:
            with contextlib.suppress(Exception):
                FfiClient.instance.queue.unsubscribe(self._failures)
            self._failures = None


def _skip_capture_callbacks(room: rtc.Room) -> None:
    queue = FfiClient.instance.queue
    mine = getattr(room, "_ffi_queue", None)
    with queue._lock:
        for i, (q, loop, keep) in enumerate(queue._subscribers):
            if q is mine and keep is not None:
                queue._subscribers[i] = (
                    q, loop, lambda e, keep=keep: e.WhichOneof("message") != "capture_audio_frame" and keep(e))


def to_rtc_audio(frame: av.AudioFrame) -> rtc.AudioFrame:
    """A packed s16 av frame as an rtc frame (interleaved int16)."""
    if frame.format.name != "s16":
        raise ValueError(f"expected packed s16 audio, got {frame.format.name}")
    channels = len(frame.layout.channels)
    data = bytes(frame.planes[0])[: frame.samples * channels * 2]
    return rtc.AudioFrame(data, frame.sample_rate, channels, frame.samples)
