"""The room sink's direct captures (lkmedia.sinks.room_capture) against the real server:
a PyAV frame whose rows are padded (line size > width) goes in through its own plane
pointers and strides and arrives upright, and 10 ms chunks handed over unawaited arrive as
the tone they were."""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import av
import numpy as np
from livekit import rtc

from lkmedia.dev.stack import DevStack
from lkmedia.sinks.room_capture import DirectAudio, capture_video

W, H = 1000, 560  # PyAV pads these rows: Y line size 1008, chroma 512 (an unpadded read would shear)
BAR = (480, 520)  # a bright vertical bar, with its own colour


def _bar_frame() -> av.VideoFrame:
    f = av.VideoFrame(W, H, "yuv420p")
    assert f.planes[0].line_size > W and f.planes[1].line_size > W // 2, "the test needs padded rows"
    for i, (y, bar) in enumerate(((30, 220), (128, 40), (128, 200))):
        plane = f.planes[i]
        rows = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)  # type: ignore[call-overload]
        a = np.full_like(rows, y)
        s = 1 if i == 0 else 2
        a[:, BAR[0] // s: BAR[1] // s] = bar
        plane.update(a.tobytes())
    return f


@contextlib.asynccontextmanager
async def _running(feed: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """``feed`` runs (a publisher's loop) for the block."""
    task = asyncio.create_task(feed)
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _first_frame(stack: DevStack, room: str, kind: rtc.TrackKind.ValueType, seconds: float) -> Any:
    viewer = rtc.Room()
    got: asyncio.Future[rtc.Track] = asyncio.get_running_loop().create_future()

    def subscribed(t: rtc.Track, *_: Any) -> None:
        if t.kind == kind and not got.done():
            got.set_result(t)

    viewer.on("track_subscribed", subscribed)
    await viewer.connect(stack.url, stack.token("viewer", room))
    try:
        track = await asyncio.wait_for(got, 15)
        if kind == rtc.TrackKind.KIND_VIDEO:
            vs = rtc.VideoStream(track, format=rtc.VideoBufferType.I420)
            deadline = time.monotonic() + seconds
            async for ev in vs:
                if ev.frame.width == W and time.monotonic() > deadline - seconds / 2:
                    await vs.aclose()
                    return ev.frame
            raise AssertionError("no frame")
        stream = rtc.AudioStream(track, sample_rate=48000, num_channels=1)
        samples: list[np.ndarray] = []
        async for aev in stream:
            samples.append(np.frombuffer(aev.frame.data, np.int16).copy())
            if sum(len(s) for s in samples) >= 48000 * seconds:
                break
        await stream.aclose()
        return np.concatenate(samples)
    finally:
        await viewer.disconnect()


async def test_a_padded_frame_arrives_upright(livekit_stack: DevStack, room_name: str) -> None:
    room = rtc.Room()
    await room.connect(livekit_stack.url, livekit_stack.token("cam", room_name))
    src = rtc.VideoSource(W, H)
    await room.local_participant.publish_track(rtc.LocalVideoTrack.create_video_track("v", src),
                                               rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA,
                                                                       simulcast=False))
    frame = _bar_frame()

    async def feed() -> None:
        while True:
            capture_video(src, frame)
            await asyncio.sleep(1 / 30)

    try:
        async with _running(feed()):
            got = await _first_frame(livekit_stack, room_name, rtc.TrackKind.KIND_VIDEO, 4)
    finally:
        await room.disconnect()
    assert (got.width, got.height) == (W, H)
    buf = np.frombuffer(got.data, np.uint8)
    y = buf[: W * H].reshape(H, W).astype(int)
    cw, ch = (W + 1) // 2, (H + 1) // 2
    u = buf[W * H: W * H + cw * ch].reshape(ch, cw).astype(int)

    def centre(row: np.ndarray) -> float:
        bright = np.nonzero(row > row.mean() + 40)[0]
        return float(bright.mean()) if len(bright) else -1.0

    top, bottom = centre(y[10]), centre(y[H - 10])
    print(f"bar centre: top row {top:.1f}, bottom row {bottom:.1f} (drawn at {sum(BAR) / 2})")
    assert abs(top - sum(BAR) / 2) < 2 and abs(bottom - sum(BAR) / 2) < 2, (top, bottom)
    assert abs(u[ch - 5, 100] - 128) < 8 and abs(u[ch - 5, 250] - 40) < 12, (u[ch - 5, 100], u[ch - 5, 250])


async def test_unawaited_audio_chunks_arrive_as_the_tone_they_were(livekit_stack: DevStack,
                                                                   room_name: str) -> None:
    room = rtc.Room()
    await room.connect(livekit_stack.url, livekit_stack.token("mic", room_name))
    src = rtc.AudioSource(48000, 1, queue_size_ms=0)
    await room.local_participant.publish_track(rtc.LocalAudioTrack.create_audio_track("a", src),
                                               rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
    direct = DirectAudio(src)
    t = np.arange(480)

    async def feed() -> None:
        n, start = 0, time.monotonic()
        while True:
            chunk = av.AudioFrame.from_ndarray(
                (8000 * np.sin(2 * np.pi * 440 * (t + n * 480) / 48000)).astype(np.int16)[None, :],
                format="s16", layout="mono")
            chunk.sample_rate = 48000
            await direct.capture(chunk)
            n += 1
            await asyncio.sleep(max(0.0, start + n * 0.01 - time.monotonic()))

    try:
        async with _running(feed()):
            pcm = await _first_frame(livekit_stack, room_name, rtc.TrackKind.KIND_AUDIO, 3)
    finally:
        direct.close()
        await room.disconnect()
    tail = pcm[-48000:].astype(float)  # the last second: past the decoder's start
    spectrum = np.abs(np.fft.rfft(tail))
    peak = float(np.argmax(spectrum[1:]) + 1)  # (1 Hz bins)
    rms = float(np.sqrt(np.mean(tail ** 2)))
    print(f"received: peak {peak:.0f} Hz, rms {rms:.0f} (sent 440 Hz at rms {8000 / np.sqrt(2):.0f})")
    assert abs(peak - 440) <= 2 and rms > 2000, (peak, rms)
