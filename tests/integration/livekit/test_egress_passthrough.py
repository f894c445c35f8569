"""Egress without transcoding, through the service and the real livekit-server, from a
publisher nobody here wrote: FFmpeg's WHIP muxer (lkmedia.dev.whip_client) publishes H.264
and Opus into livekit-server's own WHIP endpoint, and writes the SHA-1 of every Opus
packet it sends.

- An audio track egress's OGG holds exactly those packets, in order.
- A participant egress at the publisher's size writes its H.264 as it arrived (no video
  encoder ran) beside AAC, in sync (that publisher: the flash/beep one, livekit.rtc).
- A VP9 (AV1) track egress (publisher: ``lk room join`` with an IVF clip) writes a WebM
  (MP4) whose frames are the clip's own, in order.
- A participant egress of libwebrtc's VP9 (spatial layers) decodes it here, in sync."""
from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import av
import pytest
from livekit import api
from livekit.protocol import egress as lk
from livekit.protocol import models as lkm

from lkmedia.dev.lk import LkJoin, av1_clip, ivf_frames, vp9_clip
from lkmedia.dev.stack import DevStack
from lkmedia.lkrtc import av1
from lkmedia.lkrtc.packets import OPUS_SILENCE
from lkmedia.probe import assert_av_sync, av_offsets, decode_errors, probe
from lkmedia.testing.egress import S, egress_service, wait_egress
from lkmedia.testing.rooms import wait_tracks
from lkmedia.testing.whip import whip_client


def ogg_packets(path: str) -> list[bytes]:
    with av.open(path) as c:
        return [bytes(p) for p in c.demux(audio=0) if p.size]


async def test_an_opus_track_egress_writes_the_publishers_own_packets(livekit_stack: DevStack, room_name: str,
                                                                       tmp_path: Path) -> None:
    sent_path = tmp_path / "sent.txt"
    async with whip_client(f"{livekit_stack.http_url}/whip/v1", livekit_stack.token("whipper", room_name), 12,
                           env={"LKM_WHIP_SENT": str(sent_path)}) as client:
        async with egress_service(livekit_stack, tmp_path) as _svc, livekit_stack.api() as lkapi:
            # (ListParticipants can miss a WHIP participant's video: its audio is enough here)
            p = await wait_tracks(lkapi, room_name, "whipper", 1)
            audio = next(t for t in p.tracks if t.type == lkm.TrackType.AUDIO)
            info = await lkapi.egress.start_track_egress(lk.TrackEgressRequest(
                room_name=room_name, track_id=audio.sid, file=lk.DirectFileOutput(filepath="tracks/{track_id}")))
            await wait_egress(lkapi, info.egress_id, {S.EGRESS_ACTIVE})
            await asyncio.sleep(5)
            await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=info.egress_id))
            done = await wait_egress(lkapi, info.egress_id, {S.EGRESS_COMPLETE, S.EGRESS_FAILED}, timeout=30)
        assert await client.finish(30) == 0, client.err[-1000:]
    assert done.status == S.EGRESS_COMPLETE, done.error
    assert "passthrough: the publisher's opus" in done.details, done.details
    (f,) = done.file_results
    assert f.filename.endswith(".ogg") and probe(f.location).stream("audio").codec == "opus"
    assert decode_errors(f.location) == ""
    sent = sent_path.read_text().split()
    written = ogg_packets(f.location)
    is_filler = [w == OPUS_SILENCE or len(w) == 1 for w in written]  # (silence, lost-frame markers)
    filler = sum(is_filler)
    ours = [hashlib.sha1(w).hexdigest() for w, f in zip(written, is_filler, strict=True) if not f]
    # (silence between beeps encodes to identical packets: align on the whole run)
    starts = [i for i, h in enumerate(sent) if ours and h == ours[0]]
    first = next((i for i in starts if sent[i:i + len(ours)] == ours), None)
    longest = max((next((k for k, (a, b) in enumerate(zip(ours, sent[i:])) if a != b), len(ours)) for i in starts),
                  default=0)
    assert first is not None, f"the OGG's packets are not the publisher's, in order ({longest} of {len(ours)} match)"
    print(f"\nOpus track egress: {len(ours)} packets, the publisher's {first}th to {first + len(ours) - 1}th "
          f"of {len(sent)}; {filler} filler")
    assert len(ours) >= 4.5 * 50 and filler <= 2, (len(ours), filler)


async def _record(stack: DevStack, tmp_path: Path, start: Callable[[api.LiveKitAPI], Awaitable[lk.EgressInfo]],
                  seconds: float) -> lk.EgressInfo:
    """Through an egress service, the egress ``start(lkapi)`` starts, stopped ``seconds``
    after it went ACTIVE; it ends COMPLETE."""
    async with egress_service(stack, tmp_path) as _svc, stack.api() as lkapi:
        info = await start(lkapi)
        await wait_egress(lkapi, info.egress_id, {S.EGRESS_ACTIVE})
        await asyncio.sleep(seconds)
        await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=info.egress_id))
        done = await wait_egress(lkapi, info.egress_id, {S.EGRESS_COMPLETE, S.EGRESS_FAILED}, timeout=30)
    assert done.status == S.EGRESS_COMPLETE, done.error
    return done


async def _record_publisher(stack: DevStack, room: str, tmp_path: Path,
                            start: Callable[[api.LiveKitAPI], Awaitable[lk.EgressInfo]], seconds: float,
                            **options: Any) -> lk.EgressInfo:
    """``_record`` with the flash/beep publisher "pub" (another process, livekit.rtc,
    ``options`` its own) in ``room`` meanwhile."""
    from lkmedia.dev.publisher import PublisherProcess

    pub = PublisherProcess(stack.url, stack.token("pub", room), **options)
    await pub.start()
    try:
        return await _record(stack, tmp_path, start, seconds)
    finally:
        await pub.stop()


def _whole_in_sync(done: lk.EgressInfo, what: str, fps: int) -> None:
    """A participant egress's MP4: H.264 640x360 and AAC, no decode errors, at least ``fps``
    frames a second over 7 s, flashes and beeps in sync."""
    (f,) = done.file_results
    p = probe(f.location)
    v = p.stream("video")
    assert (v.codec, v.width, v.height) == ("h264", 640, 360) and p.stream("audio").codec == "aac"
    assert decode_errors(f.location) == ""
    offsets = av_offsets(f.location)
    print(f"\nparticipant egress, {what}: {v.frames} frames, {p.duration:.2f} s; "
          f"A/V offsets (ms) {[round(o * 1000, 1) for o in offsets]}")
    assert v.frames is not None and v.frames >= 7 * fps, v.frames
    assert len(offsets) >= 5, offsets
    assert_av_sync(offsets)


def _participant_640x360(room: str) -> Callable[[api.LiveKitAPI], Awaitable[lk.EgressInfo]]:
    return lambda lkapi: lkapi.egress.start_participant_egress(lk.ParticipantEgressRequest(
        room_name=room, identity="pub", advanced=lk.EncodingOptions(width=640, height=360, framerate=30),
        file_outputs=[lk.EncodedFileOutput(filepath="{publisher_identity}.mp4")]))


def _video_track_of_pub(room: str, codec: str) -> Callable[[api.LiveKitAPI], Awaitable[lk.EgressInfo]]:
    async def start(lkapi: api.LiveKitAPI) -> lk.EgressInfo:
        (video,) = (await wait_tracks(lkapi, room, "pub", 1)).tracks
        assert video.mime_type.lower() == f"video/{codec}", video
        return await lkapi.egress.start_track_egress(lk.TrackEgressRequest(
            room_name=room, track_id=video.sid, file=lk.DirectFileOutput(filepath="tracks/{track_id}")))
    return start


async def test_a_participant_egress_at_the_publishers_size_writes_its_h264_as_published(
        livekit_stack: DevStack, room_name: str, tmp_path: Path) -> None:
    """The flash/beep publisher (another process, livekit.rtc) sending 640x360 H.264 without
    simulcast, recorded at 640x360: its video is remuxed, its Opus decoded and encoded to
    AAC. (A WHIP publisher's video is listed with no size: it is transcoded.)"""
    done = await _record_publisher(livekit_stack, room_name, tmp_path, _participant_640x360(room_name), 8,
                                   video_codec="h264")
    assert "passthrough: the publisher's h264 video written as it arrived" in done.details, done.details
    _whole_in_sync(done, "H.264 as published", 20)


@pytest.mark.parametrize("codec,clip,ext", [("vp9", vp9_clip, ".webm"), ("av1", av1_clip, ".mp4")])
async def test_a_vp9_or_av1_track_egress_writes_the_publishers_frames_as_published(
        livekit_stack: DevStack, room_name: str, tmp_path: Path, codec: str, clip: Callable[..., Path],
        ext: str) -> None:
    path = await asyncio.to_thread(clip, tmp_path / "clip.ivf", 30)
    # (AV1 over RTP carries no temporal delimiter: the clip's frames without theirs)
    sent = [av1.without_delimiters(f) if codec == "av1" else f for f in ivf_frames(path)]
    with LkJoin(livekit_stack, room_name, "pub", [path], log_path=tmp_path / "lk-join.log"):
        done = await _record(livekit_stack, tmp_path, _video_track_of_pub(room_name, codec), 6)
    assert f"passthrough: the publisher's {codec}" in done.details, done.details
    (f,) = done.file_results
    v = probe(f.location).stream("video")
    assert f.filename.endswith(ext) and (v.codec, v.width, v.height) == (codec, 640, 360)
    assert decode_errors(f.location) == ""
    with av.open(f.location) as c:
        written = [bytes(p) for p in c.demux(video=0) if p.size]
    first = sent.index(written[0]) if written and written[0] in sent else None
    assert first is not None, "the file's first frame is none of the clip's"
    same = next((k for k, (a, b) in enumerate(zip(written, sent[first:])) if a != b), len(written))
    print(f"\n{codec} track egress: {len(written)} frames, the clip's {first}th to {first + len(written) - 1}th")
    assert same == len(written), f"frame {same} of {len(written)} is not the clip's next one"
    assert len(written) >= 5 * 30, len(written)


async def test_a_participant_egress_of_libwebrtcs_vp9_decodes_it_here_in_sync(livekit_stack: DevStack, room_name: str,
                                                                             tmp_path: Path) -> None:
    """The flash/beep publisher (livekit.rtc) sending VP9 as browsers do (three spatial
    layers, L3T3_KEY): lkmedia's subscriber takes it (each picture one superframe), libvpx
    decodes it (the top layer of each); the MP4 is whole, at the size asked, in sync."""
    done = await _record_publisher(livekit_stack, room_name, tmp_path, _participant_640x360(room_name), 8,
                                   video_codec="vp9", scalability_mode="L3T3_KEY")
    assert "transcoded" in done.details, done.details
    _whole_in_sync(done, "VP9 decoded", 25)


def _superframes(path: str) -> tuple[int, int]:
    """(packets, packets holding several frames: a VP9 superframe's index at their end)."""
    with av.open(path) as c:
        tails = [bytes(p)[-1] for p in c.demux(video=0) if p.size]
    return len(tails), sum((t & 0xE0) == 0xC0 for t in tails)


async def test_a_vp9_track_egress_of_spatial_layers_keeps_each_picture_whole(livekit_stack: DevStack, room_name: str,
                                                                              tmp_path: Path) -> None:
    """libwebrtc's VP9 in three spatial layers (L3T3_KEY, as browsers send it), 1280x720:
    livekit-server forwards a key picture's three layers and the top one of the others.
    The WebM has each picture as one packet (a key picture a superframe of three), and
    libvpx (a browser's decoder) gets a 1280x720 picture from each."""
    done = await _record_publisher(livekit_stack, room_name, tmp_path, _video_track_of_pub(room_name, "vp9"), 6,
                                   video_codec="vp9", scalability_mode="L3T3_KEY", width=1280, height=720,
                                   video_bitrate=2_500_000, audio=False)
    assert "passthrough: the publisher's vp9" in done.details, done.details
    (f,) = done.file_results
    # (not the probe's size: FFmpeg's own decoder, which ffprobe asks, shows each layer of a
    # superframe, the first 320x180; libvpx, as browsers, the top one)
    assert f.filename.endswith(".webm") and probe(f.location).stream("video").codec == "vp9"
    packets, superframes = _superframes(f.location)
    sizes: dict[tuple[int, int], int] = {}
    with av.open(f.location) as c:
        dec = av.CodecContext.create("libvpx-vp9", "r")
        for pk in c.demux(video=0):
            for fr in dec.decode(pk):
                sizes[(fr.width, fr.height)] = sizes.get((fr.width, fr.height), 0) + 1
    print(f"\nVP9 L3T3_KEY track egress: {packets} packets, {superframes} superframes; libvpx decoded {sizes}")
    assert superframes >= 1 and packets >= 5 * 25, (packets, superframes)
    assert list(sizes) == [(1280, 720)] and sizes[(1280, 720)] >= packets - 1, sizes
