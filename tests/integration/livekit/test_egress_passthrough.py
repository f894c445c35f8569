"""Egress without transcoding, through the service and the real livekit-server, from a
publisher nobody here wrote: FFmpeg's WHIP muxer (lkmedia.dev.whip_client) publishes H.264
and Opus into livekit-server's own WHIP endpoint, and writes the SHA-1 of every Opus
packet it sends.

- An audio track egress's OGG holds exactly those packets, in order.
- A participant egress at the publisher's size writes its H.264 as it arrived (no video
  encoder ran) beside AAC, in sync (that publisher: the flash/beep one, livekit.rtc)."""
from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import av
from livekit.protocol import egress as lk
from livekit.protocol import models as lkm

from lkmedia.dev.stack import DevStack
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


async def test_a_participant_egress_at_the_publishers_size_writes_its_h264_as_published(
        livekit_stack: DevStack, room_name: str, tmp_path: Path) -> None:
    """The flash/beep publisher (another process, livekit.rtc) sending 640x360 H.264 without
    simulcast, recorded at 640x360: its video is remuxed, its Opus decoded and encoded to
    AAC. (A WHIP publisher's video is listed with no size: it is transcoded.)"""
    from lkmedia.dev.publisher import PublisherProcess

    pub = PublisherProcess(livekit_stack.url, livekit_stack.token("pub", room_name), video_codec="h264")
    await pub.start()
    try:
        async with egress_service(livekit_stack, tmp_path) as _svc, livekit_stack.api() as lkapi:
            info = await lkapi.egress.start_participant_egress(lk.ParticipantEgressRequest(
                room_name=room_name, identity="pub",
                advanced=lk.EncodingOptions(width=640, height=360, framerate=30),
                file_outputs=[lk.EncodedFileOutput(filepath="{publisher_identity}.mp4")]))
            await wait_egress(lkapi, info.egress_id, {S.EGRESS_ACTIVE})
            await asyncio.sleep(8)
            await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=info.egress_id))
            done = await wait_egress(lkapi, info.egress_id, {S.EGRESS_COMPLETE, S.EGRESS_FAILED}, timeout=30)
    finally:
        await pub.stop()
    assert done.status == S.EGRESS_COMPLETE, done.error
    assert "passthrough: the publisher's h264 video written as it arrived" in done.details, done.details
    (f,) = done.file_results
    p = probe(f.location)
    v = p.stream("video")
    assert (v.codec, v.width, v.height) == ("h264", 640, 360) and p.stream("audio").codec == "aac"
    assert decode_errors(f.location) == ""
    offsets = av_offsets(f.location)
    print(f"\nparticipant egress, H.264 as published: {v.frames} frames, {p.duration:.2f} s; "
          f"A/V offsets (ms) {[round(o * 1000, 1) for o in offsets]}")
    assert v.frames is not None and v.frames >= 7 * 20, v.frames
    assert len(offsets) >= 5, offsets
    assert_av_sync(offsets)
