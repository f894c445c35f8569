"""The egress service driven by an unmodified livekit-server through the public API.

livekit-api (Twirp) -> livekit-server -> Redis -> lkmedia EgressService -> livekit.rtc
subscription -> graph -> MP4; status back through IOInfo, read with ListEgress.
"""
from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from livekit import api
from livekit.protocol import egress as lk

from lkmedia.dev.stack import DevStack, free_port
from lkmedia.probe import assert_av_sync, av_offsets, decode_errors, probe
from lkmedia.service.config import parse_config
from lkmedia.service.egress import EgressService
from lkmedia.testing.egress import egress_service, service_config_body, wait_egress

S = lk.EgressStatus


@pytest.fixture
async def service(livekit_stack: DevStack, tmp_path: Path) -> AsyncIterator[EgressService]:
    async with egress_service(livekit_stack, tmp_path) as svc:
        yield svc


async def test_participant_egress_records_an_mp4_through_the_real_api(
    livekit_stack: DevStack, service: EgressService, publisher: object, room_name: str
) -> None:
    async with livekit_stack.api() as lkapi:
        req = lk.ParticipantEgressRequest(
            room_name=room_name, identity="pub",
            advanced=lk.EncodingOptions(width=640, height=360, framerate=30, video_bitrate=1000),
            file_outputs=[lk.EncodedFileOutput(filepath="{room_name}/{publisher_identity}.mp4")])
        t0 = time.monotonic()
        info = await lkapi.egress.start_participant_egress(req)
        assert info.status == S.EGRESS_STARTING and info.egress_id.startswith("EG_")
        active = await wait_egress(lkapi, info.egress_id, {S.EGRESS_ACTIVE})
        t_active = time.monotonic()
        start_latency = t_active - t0
        # the health endpoint lists the running egress (Go's JSON shape)
        port = service.conf.health_port
        raw = await asyncio.to_thread(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read())
        health = json.loads(raw)
        assert "CpuLoad" in health and info.egress_id in health
        await asyncio.sleep(6)  # ≥ 3 flash/beep pairs even if the first video frame comes 2 s late
        stopped = await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=info.egress_id))
        t_stop = time.monotonic()
        assert stopped.status in (S.EGRESS_ENDING, S.EGRESS_ACTIVE)
        done = await wait_egress(lkapi, info.egress_id, {S.EGRESS_COMPLETE, S.EGRESS_FAILED}, timeout=30)
    assert done.status == S.EGRESS_COMPLETE, done.error
    assert active.started_at > 0 and done.ended_at > done.started_at
    (f,) = done.file_results
    p = probe(f.location)
    assert p.has("video") and p.has("audio") and p.stream("video").codec == "h264"
    assert p.duration == pytest.approx(t_stop - t_active, abs=0.5), (p.duration, t_stop - t_active)
    assert f.duration / 1e9 == pytest.approx(p.duration, abs=0.3)
    assert decode_errors(f.location) == ""
    offsets = av_offsets(f.location)
    assert len(offsets) >= 3
    assert_av_sync(offsets)
    assert "End reason: StopEgress API" in done.details
    print(f"start latency API -> ACTIVE: {start_latency:.2f} s; A/V offsets {offsets}")


async def test_an_audio_only_participant_who_leaves_ends_its_egress(
    livekit_stack: DevStack, service: EgressService, room_name: str
) -> None:
    """A participant egress ends (COMPLETE, its audio kept) once its participant has left,
    as the Go egress's does: an audio-only one stayed ACTIVE after its publisher left."""
    from lkmedia.dev.publisher import PublisherProcess
    pub = PublisherProcess(livekit_stack.url, livekit_stack.token("voice", room_name), video=False)
    await pub.start()
    try:
        async with livekit_stack.api() as lkapi:
            info = await lkapi.egress.start_participant_egress(lk.ParticipantEgressRequest(
                room_name=room_name, identity="voice", preset=lk.EncodingOptionsPreset.H264_720P_30,
                file_outputs=[lk.EncodedFileOutput(filepath="{room_name}/voice.mp4")]))
            await wait_egress(lkapi, info.egress_id, {S.EGRESS_ACTIVE})
            await asyncio.sleep(3)
            await pub.stop()
            done = await wait_egress(lkapi, info.egress_id, {S.EGRESS_COMPLETE, S.EGRESS_FAILED,
                                                              S.EGRESS_ABORTED, S.EGRESS_LIMIT_REACHED}, timeout=25)
    finally:
        await pub.stop()
    assert done.status == S.EGRESS_COMPLETE, done.error
    (f,) = done.file_results
    p = probe(f.location)
    assert not p.has("video") and p.has("audio") and p.duration > 2.5, p
    assert decode_errors(f.location) == ""
    assert "End reason: Source closed" in done.details


async def test_invalid_requests_fail_with_a_message_and_the_service_keeps_serving(
    livekit_stack: DevStack, service: EgressService, publisher: object, room_name: str
) -> None:
    async with livekit_stack.api() as lkapi:
        bad = lk.ParticipantEgressRequest(room_name=room_name, identity="pub",
                                          stream_outputs=[lk.StreamOutput(urls=["rtmp://nohost"])])
        with pytest.raises(api.TwirpError) as ei:
            await lkapi.egress.start_participant_egress(bad)
        assert "invalid url" in ei.value.message
        with pytest.raises(api.TwirpError) as ei:
            await lkapi.egress.start_participant_egress(lk.ParticipantEgressRequest(
                room_name=room_name, identity="pub", preset=77, file_outputs=[lk.EncodedFileOutput(filepath="p")]))
        assert "request has missing or invalid field: preset" in ei.value.message
        info = await lkapi.egress.start_track_egress(lk.TrackEgressRequest(
            room_name=room_name, track_id="TR_doesnotexist", file=lk.DirectFileOutput(filepath="x")))
        failed = await wait_egress(lkapi, info.egress_id, {S.EGRESS_FAILED, S.EGRESS_COMPLETE})
        assert failed.status == S.EGRESS_FAILED and "TR_doesnotexist not found" in failed.error
        # the next valid request still works
        ok = await lkapi.egress.start_participant_egress(lk.ParticipantEgressRequest(
            room_name=room_name, identity="pub", file_outputs=[lk.EncodedFileOutput(filepath="ok.mp4")]))
        await wait_egress(lkapi, ok.egress_id, {S.EGRESS_ACTIVE})
        await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=ok.egress_id))
        done = await wait_egress(lkapi, ok.egress_id, {S.EGRESS_COMPLETE, S.EGRESS_FAILED}, timeout=30)
        assert done.status == S.EGRESS_COMPLETE, done.error


async def test_lk_cli_starts_an_egress_that_lkmedia_records(
    livekit_stack: DevStack, service: EgressService, publisher: object, room_name: str, tmp_path: Path
) -> None:
    """`lk egress start` (livekit-cli v2.18.2, a client nobody here wrote) against lkmedia."""
    from lkmedia.dev.stack import find_binary

    lk_bin = find_binary("lk")
    req = tmp_path / "req.json"
    req.write_text(json.dumps({"room_name": room_name, "identity": "pub",
                               "file_outputs": [{"filepath": "cli/{room_name}.mp4"}]}))
    env = {"LIVEKIT_URL": livekit_stack.http_url, "LIVEKIT_API_KEY": livekit_stack.api_key,
           "LIVEKIT_API_SECRET": livekit_stack.api_secret, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = await asyncio.create_subprocess_exec(lk_bin, "egress", "start", "--type", "participant", str(req),
                                                env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    egress_id = next(w for w in text.replace('"', " ").split() if w.startswith("EG_"))
    async with livekit_stack.api() as lkapi:
        await wait_egress(lkapi, egress_id, {S.EGRESS_ACTIVE})
        await asyncio.sleep(3)
        proc = await asyncio.create_subprocess_exec(lk_bin, "egress", "stop", "--id", egress_id, env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, out.decode(errors="replace")
        done = await wait_egress(lkapi, egress_id, {S.EGRESS_COMPLETE, S.EGRESS_FAILED}, timeout=30)
    assert done.status == S.EGRESS_COMPLETE, done.error
    p = probe(done.file_results[0].location)
    assert p.has("video") and p.has("audio") and p.duration == pytest.approx(3.0, abs=1.0)


async def test_webhooks_arrive_in_order(tmp_path: Path) -> None:
    """egress_started, egress_updated (ACTIVE), egress_ended, posted by livekit-server."""
    from aiohttp import web

    from lkmedia.dev.publisher import PublisherProcess

    events: list[tuple[str, int]] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("event", "").startswith("egress_"):
            events.append((body["event"], S.Value(body["egressInfo"].get("status", "EGRESS_STARTING"))))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    stack = DevStack(webhook_urls=[f"http://127.0.0.1:{port}/hook"])
    stack.start()
    try:
        body = service_config_body(stack)
        svc = EgressService(parse_config(body), tmp_dir=str(tmp_path / "eg"))
        await svc.start()
        pub = PublisherProcess(stack.url, stack.token("pub", "hooks"))
        await pub.start()
        try:
            async with stack.api() as lkapi:
                info = await lkapi.egress.start_participant_egress(lk.ParticipantEgressRequest(
                    room_name="hooks", identity="pub", file_outputs=[lk.EncodedFileOutput(filepath="h.mp4")]))
                await wait_egress(lkapi, info.egress_id, {S.EGRESS_ACTIVE})
                await asyncio.sleep(2)
                await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=info.egress_id))
                await wait_egress(lkapi, info.egress_id, {S.EGRESS_COMPLETE}, timeout=30)
            deadline = time.monotonic() + 10
            while not any(e == "egress_ended" for e, _ in events) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        finally:
            await pub.stop()
            await svc.close(drain_timeout=10)
    finally:
        stack.cleanup()
        await runner.cleanup()
    names = [e for e, _ in events]
    assert names[0] == "egress_started" and names[-1] == "egress_ended", events
    assert "egress_updated" in names and names.index("egress_updated") < names.index("egress_ended")
    assert events[-1][1] == S.EGRESS_COMPLETE


async def _wait_tracks(pub: object, timeout: float = 10) -> tuple[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v, a = getattr(pub, "video_sid", None), getattr(pub, "audio_sid", None)
        if v and a:
            return v, a
        await asyncio.sleep(0.1)
    raise AssertionError("publisher tracks never appeared")


async def _record(lkapi: api.LiveKitAPI, start: object, seconds: float) -> lk.EgressInfo:
    return (await _record_timed(lkapi, start, seconds))[0]


async def _record_timed(lkapi: api.LiveKitAPI, start: object, seconds: float) -> tuple[lk.EgressInfo, float]:
    """Record ``seconds``; returns the final info and the time between ACTIVE and StopEgress."""
    info = await start  # type: ignore[misc]
    active = await wait_egress(lkapi, info.egress_id, {S.EGRESS_ACTIVE})
    await asyncio.sleep(seconds)
    await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=info.egress_id))
    # From ACTIVE as the service stamped it, not as our 0.1 s polling saw it.
    interval = time.time() - active.updated_at / 1e9
    done = await wait_egress(lkapi, info.egress_id, {S.EGRESS_COMPLETE, S.EGRESS_FAILED}, timeout=30)
    assert done.status == S.EGRESS_COMPLETE, done.error
    return done, interval


async def test_track_egress_keeps_codec_family_and_websocket_gets_pcm(
    livekit_stack: DevStack, service: EgressService, publisher: object, room_name: str
) -> None:
    from websockets.asyncio.server import serve

    video_sid, audio_sid = await _wait_tracks(publisher)
    received: list[bytes] = []

    async def pcm(ws: object) -> None:
        async for msg in ws:  # type: ignore[attr-defined]
            if isinstance(msg, bytes):
                received.append(msg)

    async with livekit_stack.api() as lkapi:
        audio, audio_interval = await _record_timed(lkapi, lkapi.egress.start_track_egress(lk.TrackEgressRequest(
            room_name=room_name, track_id=audio_sid, file=lk.DirectFileOutput(filepath="tracks/{track_id}"))), 3)
        video = await _record(lkapi, lkapi.egress.start_track_egress(lk.TrackEgressRequest(
            room_name=room_name, track_id=video_sid, file=lk.DirectFileOutput(filepath="tracks/{track_id}"))), 3)
        async with serve(pcm, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            await _record(lkapi, lkapi.egress.start_track_egress(lk.TrackEgressRequest(
                room_name=room_name, track_id=audio_sid, websocket_url=f"ws://127.0.0.1:{port}/pcm")), 3)
    a = probe(audio.file_results[0].location)
    assert audio.file_results[0].filename.endswith(".ogg") and a.stream("audio").codec == "opus" and not a.has("video")
    assert a.duration == pytest.approx(audio_interval, abs=0.5), (a.duration, audio_interval)
    # written as published (lkmedia.lkrtc's subscriber), as EgressInfo says
    assert "passthrough: the publisher's opus" in audio.details and "passthrough: the publisher's vp8" in video.details, \
        (audio.details, video.details)
    v = probe(video.file_results[0].location)
    assert video.file_results[0].filename.endswith(".webm") and v.stream("video").codec == "vp8"
    assert decode_errors(audio.file_results[0].location) == "" and decode_errors(video.file_results[0].location) == ""
    assert (v.stream("video").width, v.stream("video").height) == (640, 360)  # the track's own size
    total = sum(len(b) for b in received)
    # 48 kHz stereo s16: 192 kB per second of audio
    assert 2.4 * 192_000 < total < 4.0 * 192_000, total


async def test_participant_egress_to_mp4_hls_and_rtmp_at_once(
    livekit_stack: DevStack, service: EgressService, publisher: object, room_name: str, rtmp_server: object
) -> None:
    url = rtmp_server.url("egress_key")  # type: ignore[attr-defined]
    async with livekit_stack.api() as lkapi:
        done, interval = await _record_timed(lkapi, lkapi.egress.start_participant_egress(lk.ParticipantEgressRequest(
            room_name=room_name, identity="pub",
            advanced=lk.EncodingOptions(width=640, height=360, framerate=30, video_bitrate=1000, key_frame_interval=2),
            file_outputs=[lk.EncodedFileOutput(filepath="multi/out.mp4")],
            segment_outputs=[lk.SegmentedFileOutput(filename_prefix="multi/hls/seg", playlist_name="index.m3u8",
                                                    segment_duration=2)],
            stream_outputs=[lk.StreamOutput(protocol=lk.StreamProtocol.RTMP, urls=[url])])), 7)
    mp4 = probe(done.file_results[0].location)
    (seg,) = done.segment_results
    hls = probe(seg.playlist_location)
    (st,) = done.stream_results
    assert "egress_key" not in st.url and st.status == lk.StreamInfo.FINISHED
    assert "egress_key" not in str(done.room_composite) + str(done.participant)
    (rec,) = rtmp_server.recordings("egress_key")  # type: ignore[attr-defined]
    flv = probe(str(rec))
    for p in (mp4, hls, flv):
        assert p.has("video") and p.has("audio") and p.stream("video").codec == "h264"
        assert p.duration == pytest.approx(interval, abs=0.5), (p.path, p.duration, interval)
    assert seg.segment_count >= 3
    offsets = av_offsets(done.file_results[0].location)
    assert len(offsets) >= 4
    assert_av_sync(offsets)


def _channel_energy(path: str) -> tuple[float, float]:
    import av
    import numpy as np

    left = right = 0.0
    with av.open(path) as c:
        for f in c.decode(c.streams.audio[0]):
            a = f.to_ndarray().astype(np.float64)
            if not f.format.is_planar:
                a = a.reshape(-1, 2).T
            left += float(np.abs(a[0]).sum())
            right += float(np.abs(a[1]).sum())
    return left, right


@pytest.mark.parametrize("mixing", ["DEFAULT_MIXING", "DUAL_CHANNEL_ALTERNATE"])
async def test_audio_only_room_composite_mixes_in_process(
    livekit_stack: DevStack, service: EgressService, publisher: object, room_name: str, mixing: str
) -> None:
    async with livekit_stack.api() as lkapi:
        done, interval = await _record_timed(lkapi, lkapi.egress.start_room_composite_egress(
            lk.RoomCompositeEgressRequest(room_name=room_name, audio_only=True, audio_mixing=lk.AudioMixing.Value(mixing),
                                          file_outputs=[lk.EncodedFileOutput(filepath=f"room/{mixing}")])), 3)
    f = done.file_results[0]
    p = probe(f.location)
    assert f.filename.endswith(".ogg") and p.stream("audio").codec == "opus" and not p.has("video")
    assert p.stream("audio").channels == 2 and p.duration == pytest.approx(interval, abs=0.5), (p.duration, interval)
    left, right = _channel_energy(f.location)
    assert left > 0
    if mixing == "DEFAULT_MIXING":
        assert right == pytest.approx(left, rel=0.05)  # the participant in both channels
    else:
        assert right < left * 0.01  # the first (only) track alternates to the left


async def test_track_composite_egress(
    livekit_stack: DevStack, service: EgressService, publisher: object, room_name: str
) -> None:
    video_sid, audio_sid = await _wait_tracks(publisher)
    async with livekit_stack.api() as lkapi:
        done, interval = await _record_timed(lkapi, lkapi.egress.start_track_composite_egress(lk.TrackCompositeEgressRequest(
            room_name=room_name, audio_track_id=audio_sid, video_track_id=video_sid,
            advanced=lk.EncodingOptions(width=640, height=360, framerate=30, video_bitrate=1000),
            file_outputs=[lk.EncodedFileOutput(filepath="tc/{room_name}")])), 6)
    f = done.file_results[0]
    p = probe(f.location)
    assert f.filename.endswith(".mp4") and p.stream("video").codec == "h264" and p.stream("audio").codec == "aac"
    assert (p.stream("video").width, p.stream("video").height) == (640, 360)
    assert p.duration == pytest.approx(interval, abs=0.5), (p.duration, interval)
    # 6 s, since the first video frame may come a second or two after ACTIVE (the
    # subscriber waits for a key frame) while audio flows at once: ≥ 3 flash/beep pairs.
    offsets = av_offsets(f.location)
    assert len(offsets) >= 3
    assert_av_sync(offsets)


async def test_v2_start_egress_with_a_media_source(
    livekit_stack: DevStack, service: EgressService, publisher: object, room_name: str
) -> None:
    """livekit-server v1.13.5 routes the v2 StartEgress (rpc field 16) to lkmedia."""
    async with livekit_stack.api() as lkapi:
        done, interval = await _record_timed(lkapi, lkapi.egress.start_egress(lk.StartEgressRequest(
            room_name=room_name, media=lk.MediaSource(
                participant_video=lk.ParticipantVideo(identity="pub"),
                audio=lk.AudioConfig(routes=[lk.AudioRoute(participant_identity="pub")])),
            advanced=lk.EncodingOptions(width=640, height=360, framerate=30, video_bitrate=800),
            outputs=[lk.Output(file=lk.FileOutput(filepath="v2/{room_name}.mp4"))])), 3)
    assert done.HasField("egress") and done.egress.media.participant_video.identity == "pub"
    p = probe(done.file_results[0].location)
    assert p.has("video") and p.has("audio") and p.duration == pytest.approx(interval, abs=0.5)


async def test_update_stream_adds_and_removes_destinations(
    livekit_stack: DevStack, service: EgressService, publisher: object, room_name: str, rtmp_server: object
) -> None:
    """UpdateStream through livekit-server: a destination added while streaming starts
    receiving, a removed one ends FINISHED; neither key shows in EgressInfo."""
    first, second = rtmp_server.url("first_key"), rtmp_server.url("second_key")  # type: ignore[attr-defined]
    async with livekit_stack.api() as lkapi:
        info = await lkapi.egress.start_participant_egress(lk.ParticipantEgressRequest(
            room_name=room_name, identity="pub",
            advanced=lk.EncodingOptions(width=640, height=360, framerate=30, video_bitrate=800, key_frame_interval=2),
            stream_outputs=[lk.StreamOutput(protocol=lk.StreamProtocol.RTMP, urls=[first])]))
        await wait_egress(lkapi, info.egress_id, {S.EGRESS_ACTIVE}, 30)
        await asyncio.sleep(3)
        upd = await lkapi.egress.update_stream(lk.UpdateStreamRequest(
            egress_id=info.egress_id, add_output_urls=[second], remove_output_urls=[first]))
        assert len(upd.stream_results) == 2, upd.stream_results
        await asyncio.sleep(4)
        await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=info.egress_id))
        done = await wait_egress(lkapi, info.egress_id, {S.EGRESS_COMPLETE}, 30)
    assert "first_key" not in str(done) and "second_key" not in str(done)
    assert len(done.stream_results) == 2
    assert all(r.status == lk.StreamInfo.FINISHED for r in done.stream_results), done.stream_results
    (a,) = rtmp_server.recordings("first_key")  # type: ignore[attr-defined]
    (b,) = rtmp_server.recordings("second_key")  # type: ignore[attr-defined]
    # Each destination got all the media from its first packet (its started_at) to its
    # end: the removed one up to the update, the added one from the next key frame
    # (every 2 s here) to the stop. Timed from the sink's own stamps, since the first
    # media reaches the RTMP server a variable second or so after ACTIVE.
    first_info, second_info = sorted(done.stream_results, key=lambda r: r.started_at)
    for path, r in ((a, first_info), (b, second_info)):
        sent = (r.ended_at - r.started_at) / 1e9
        assert _span(str(path)) == pytest.approx(sent, abs=0.75), (path, _span(str(path)), sent)
    assert 1.0 <= _span(str(a)) <= 4.0, _span(str(a))  # removed after 3 s of streaming
    assert 1.5 <= _span(str(b)) <= 4.5, _span(str(b))  # 2-4 s of the 4 after the update
    pb = probe(str(b))
    assert pb.has("video") and pb.has("audio") and decode_errors(str(b)) == ""


def _span(path: str) -> float:
    import av

    with av.open(path) as c:
        t = [float(pk.pts * pk.time_base) for pk in c.demux(c.streams.video[0]) if pk.pts is not None]
    return max(t) - min(t)
