"""What a Go egress user meets on day one, against the real livekit-server (issue 8's
defects): absolute file paths, a camera unpublished mid-recording, a participant who is
not in the room, a retried StartEgress, error texts that are sentences."""
from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from livekit import api
from livekit.protocol import egress as lk

from lkmedia.dev.publisher import PublisherProcess
from lkmedia.dev.stack import DevStack, find_binary
from lkmedia.probe import decode_errors, probe
from lkmedia.rpc import START_EGRESS_SELECTION, RedisBus
from lkmedia.rpc.client import RpcClient
from lkmedia.rpc.messages import StartEgressRequest, pack_start_egress
from lkmedia.service.egress import EgressService
from lkmedia.testing.egress import TERMINAL, S, egress_service, wait_egress

SMALL = lk.EncodingOptions(width=320, height=180, framerate=15, video_bitrate=300, audio_bitrate=64)


@pytest.fixture
async def service(livekit_stack: DevStack, tmp_path: Path) -> AsyncIterator[EgressService]:
    async with egress_service(livekit_stack, tmp_path) as svc:
        yield svc


async def _record(lkapi: api.LiveKitAPI, req: lk.ParticipantEgressRequest, seconds: float) -> lk.EgressInfo:
    info = await lkapi.egress.start_participant_egress(req)
    await wait_egress(lkapi, info.egress_id, {S.EGRESS_ACTIVE})
    await asyncio.sleep(seconds)
    await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=info.egress_id))
    return await wait_egress(lkapi, info.egress_id, TERMINAL, timeout=30)


async def test_an_absolute_filepath_is_written_where_the_request_says(
        livekit_stack: DevStack, service: EgressService, publisher: object, room_name: str, tmp_path: Path) -> None:
    """Was: FAILED "ValueError: filename '/…/out/{room_name}-{time}.mp4' escapes the output
    directory (absolute path)". A Go config and request work unchanged."""
    out = tmp_path / "out"  # a mounted volume, as Go users write /out/...
    async with livekit_stack.api() as lkapi:
        done = await _record(lkapi, lk.ParticipantEgressRequest(
            room_name=room_name, identity="pub", advanced=SMALL,
            file_outputs=[lk.EncodedFileOutput(filepath=f"{out}/{{room_name}}-{{time}}.mp4")]), 3)
    assert done.status == S.EGRESS_COMPLETE, done.error
    (f,) = done.file_results
    assert f.location.startswith(str(out) + "/") and f.filename.startswith(room_name)
    files = list(out.glob(f"{room_name}-*.mp4"))
    assert [str(p) for p in files] == [f.location]
    p = probe(f.location)
    assert p.has("video") and p.has("audio") and p.duration > 2.0 and decode_errors(f.location) == ""
    assert not list((tmp_path / "egress" / done.egress_id).glob("**/*.mp4"))  # moved, not copied


async def test_output_roots_confine_absolute_paths_and_dotdot_never_escapes(
        livekit_stack: DevStack, publisher: object, room_name: str, tmp_path: Path) -> None:
    allowed = tmp_path / "recordings"
    async with egress_service(livekit_stack, tmp_path, f"output_roots: [{allowed}]\n"), \
            livekit_stack.api() as lkapi:
        for path in (f"{tmp_path}/elsewhere/x.mp4", f"{allowed}/../escape/x.mp4"):
            with pytest.raises(api.TwirpError) as ei:
                await lkapi.egress.start_participant_egress(lk.ParticipantEgressRequest(
                    room_name=room_name, identity="pub", file_outputs=[lk.EncodedFileOutput(filepath=path)]))
            assert "is outside the directories this egress may write to" in ei.value.message
            assert f"output_roots: {allowed}" in ei.value.message
        done = await _record(lkapi, lk.ParticipantEgressRequest(
            room_name=room_name, identity="pub", advanced=SMALL,
            file_outputs=[lk.EncodedFileOutput(filepath=f"{allowed}/{{room_name}}.mp4")]), 2)
        assert done.status == S.EGRESS_COMPLETE, done.error
        assert done.file_results[0].location == str(allowed / f"{room_name}.mp4")
    assert not (tmp_path / "escape").exists() and not (tmp_path / "elsewhere").exists()


async def _joined(lkapi: api.LiveKitAPI, room: str, identity: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            res = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
            if any(p.identity == identity and len(p.tracks) >= 2 for p in res.participants):
                return
        except api.TwirpError:
            pass  # the room is not there yet
        assert time.monotonic() < deadline, f"{identity} did not publish in {room} within {timeout:g} s"
        await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6 s 720p H.264 clip (one slice per frame, as ``lk`` needs) and 30 s of Opus."""
    d = tmp_path_factory.mktemp("clips")
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=1280x720:rate=30", "-t", "6",
                    "-c:v", "libx264", "-threads", "1", "-g", "30", "-profile:v", "baseline", "-pix_fmt", "yuv420p",
                    "-b:v", "2M", "-bsf:v", "h264_mp4toannexb", str(d / "clip.h264")], check=True)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "sine=frequency=1000:duration=30",
                    "-c:a", "libopus", "-ar", "48000", "-ac", "2", str(d / "beep.ogg")], check=True)
    return d


async def test_a_camera_whose_clip_ends_mid_recording_does_not_end_it(
        livekit_stack: DevStack, service: EgressService, room_name: str, clips: Path) -> None:
    """Was: FAILED 'video_encoder: Invalid argument returned 22' when `lk room join --publish
    clip.h264` reached the end of its clip and unpublished the video, staying in the room
    (the track's last frame had no picture, 2x0). The audio goes on, the video holds."""
    env = {**os.environ, "LIVEKIT_URL": livekit_stack.url, "LIVEKIT_API_KEY": livekit_stack.api_key,
           "LIVEKIT_API_SECRET": livekit_stack.api_secret}
    lk_join = subprocess.Popen([find_binary("lk"), "room", "join", "--identity", "cam", "--publish",
                                str(clips / "clip.h264"), "--publish", str(clips / "beep.ogg"), "--fps", "30", room_name],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with livekit_stack.api() as lkapi:
            await _joined(lkapi, room_name, "cam")
            info = await lkapi.egress.start_participant_egress(lk.ParticipantEgressRequest(
                room_name=room_name, identity="cam", preset=lk.H264_720P_30,
                file_outputs=[lk.EncodedFileOutput(filepath="cam.mp4")]))
            active = await wait_egress(lkapi, info.egress_id, {S.EGRESS_ACTIVE})
            t_active = time.monotonic()
            await asyncio.sleep(10)  # the clip ends ~6 s after the join
            mid = (await lkapi.egress.list_egress(lk.ListEgressRequest(egress_id=info.egress_id))).items[0]
            assert mid.status == S.EGRESS_ACTIVE, mid.error
            await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=info.egress_id))
            t_stop = time.monotonic()
            done = await wait_egress(lkapi, info.egress_id, TERMINAL, timeout=30)
    finally:
        lk_join.kill()
        lk_join.wait()
    assert done.status == S.EGRESS_COMPLETE, done.error
    assert active.started_at > 0
    (f,) = done.file_results
    p = probe(f.location)
    assert p.duration == pytest.approx(t_stop - t_active, abs=1.0), p.duration
    assert p.stream("audio").duration > 9.0 and p.has("video")
    assert decode_errors(f.location) == ""


async def test_a_camera_unpublished_and_published_again_continues_the_file(
        livekit_stack: DevStack, service: EgressService, room_name: str) -> None:
    pub = PublisherProcess(livekit_stack.url, livekit_stack.token("pub", room_name))
    await pub.start()
    try:
        async with livekit_stack.api() as lkapi:
            info = await lkapi.egress.start_participant_egress(lk.ParticipantEgressRequest(
                room_name=room_name, identity="pub", advanced=SMALL,
                file_outputs=[lk.EncodedFileOutput(filepath="cam.mp4")]))
            await wait_egress(lkapi, info.egress_id, {S.EGRESS_ACTIVE})
            await asyncio.sleep(2)
            await pub.unpublish("video")  # the camera goes; the participant and its microphone stay
            await asyncio.sleep(4)
            mid = (await lkapi.egress.list_egress(lk.ListEgressRequest(egress_id=info.egress_id))).items[0]
            assert mid.status == S.EGRESS_ACTIVE, mid.error
            await pub.republish("video")
            await asyncio.sleep(3)
            await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=info.egress_id))
            done = await wait_egress(lkapi, info.egress_id, TERMINAL, timeout=30)
    finally:
        await pub.stop()
    assert done.status == S.EGRESS_COMPLETE, done.error
    (f,) = done.file_results
    p = probe(f.location)
    assert p.duration == pytest.approx(9.0, abs=1.5)
    assert p.stream("video").duration > 7.5 and p.stream("audio").duration > 7.5  # one continuous file
    assert decode_errors(f.location) == ""


async def test_a_participant_who_is_not_in_the_room_fails_naming_it(
        livekit_stack: DevStack, service: EgressService, publisher: object, room_name: str) -> None:
    """Was: ACTIVE, then FAILED 20 s later 'file: no media from video_encoder.out while 20.0 s
    arrived on the other inputs', which did not name the identity."""
    async with livekit_stack.api() as lkapi:
        t0 = time.monotonic()
        info = await lkapi.egress.start_participant_egress(lk.ParticipantEgressRequest(
            room_name=room_name, identity="ghost", file_outputs=[lk.EncodedFileOutput(filepath="g.mp4")]))
        seen = set()
        while True:
            cur = (await lkapi.egress.list_egress(lk.ListEgressRequest(egress_id=info.egress_id))).items[0]
            seen.add(cur.status)
            if cur.status in TERMINAL:
                break
            assert time.monotonic() - t0 < 45
            await asyncio.sleep(0.25)
    assert S.EGRESS_ACTIVE not in seen  # it never recorded anything
    assert cur.status == S.EGRESS_FAILED
    assert cur.error.startswith("participant ghost not found in room"), cur.error
    assert 29 < time.monotonic() - t0 < 40  # waited as the Go egress does (30 s)


async def test_a_stop_while_it_waits_for_its_participant_aborts_it_at_once(
        livekit_stack: DevStack, service: EgressService, publisher: object, room_name: str) -> None:
    async with livekit_stack.api() as lkapi:
        info = await lkapi.egress.start_participant_egress(lk.ParticipantEgressRequest(
            room_name=room_name, identity="late", file_outputs=[lk.EncodedFileOutput(filepath="l.mp4")]))
        await asyncio.sleep(2)
        t0 = time.monotonic()
        await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=info.egress_id))
        done = await wait_egress(lkapi, info.egress_id, TERMINAL, timeout=10)
    assert done.status == S.EGRESS_ABORTED and done.error == "stopped before it started", done
    assert time.monotonic() - t0 < 3


async def test_a_bad_filename_fails_with_a_sentence_not_an_exception_name(
        livekit_stack: DevStack, service: EgressService, publisher: object, room_name: str) -> None:
    async with livekit_stack.api() as lkapi:
        info = await lkapi.egress.start_participant_egress(lk.ParticipantEgressRequest(
            room_name=room_name, identity="pub", file_outputs=[lk.EncodedFileOutput(filepath="{nosuch}.mp4")]))
        done = await wait_egress(lkapi, info.egress_id, TERMINAL, timeout=30)
    assert done.status == S.EGRESS_FAILED
    assert done.error.startswith("unknown placeholder {nosuch} in filename"), done.error
    assert "Error:" not in done.error


async def test_a_retried_start_with_the_same_egress_id_is_the_same_egress(
        livekit_stack: DevStack, service: EgressService, publisher: object, room_name: str) -> None:
    """Was: livekit-server, having timed out on a StartEgress, sent it again with the same
    egress id, and got 409 'egress already exists' for an egress that ran. StartEgress
    goes here exactly as livekit-server sends it (psrpc over its Redis)."""
    egress_id = "EG_retry" + uuid.uuid4().hex[:8]
    req = pack_start_egress(lk.ParticipantEgressRequest(
        room_name=room_name, identity="pub", advanced=SMALL, file_outputs=[lk.EncodedFileOutput(filepath="r.mp4")]),
        egress_id=egress_id)
    bus = RedisBus(livekit_stack.redis_address)
    await bus.start()
    client = RpcClient(bus, "EgressInternal")
    await client.start()
    try:
        first, again = await asyncio.gather(*(client.call("StartEgress", req, lk.EgressInfo, topic="", timeout=10,
                                                          selection=START_EGRESS_SELECTION) for _ in range(2)))
        async with livekit_stack.api() as lkapi:
            await wait_egress(lkapi, egress_id, {S.EGRESS_ACTIVE})
            later = await client.call("StartEgress", req, lk.EgressInfo, topic="", timeout=10,
                                      selection=START_EGRESS_SELECTION)
            assert (later.egress_id, later.status) == (egress_id, S.EGRESS_ACTIVE)
            res = await lkapi.egress.list_egress(lk.ListEgressRequest(room_name=room_name))
            assert [i.egress_id for i in res.items].count(egress_id) == 1
            await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=egress_id))
            done = await wait_egress(lkapi, egress_id, TERMINAL, timeout=30)
    finally:
        await client.close()
        await bus.close()
    assert first.egress_id == again.egress_id == egress_id
    assert done.status == S.EGRESS_COMPLETE, done.error
    # the job leaves the table once its process is reaped, just after its last status went out
    for _ in range(100):
        if not service.worker.jobs:
            break
        await asyncio.sleep(0.1)
    assert not service.worker.jobs, "the job was still in the worker's table 10 s after COMPLETE"
    assert len(list(Path(service.tmp_dir).glob(f"{egress_id}/*.mp4"))) == 1
    assert isinstance(req, StartEgressRequest)
