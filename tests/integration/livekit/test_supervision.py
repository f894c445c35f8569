"""The worker core supervising egress jobs, against the real livekit-server: a frozen
pipeline ends the egress FAILED with every other output finalised, a job process that
stops answering is killed and reported with its partial output, and recovering a long
recording happens off the service's event loop."""
from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from livekit.protocol import egress as lk

from lkmedia.dev.stack import DevStack
from lkmedia.egress.spec import initial_info, spec_from_request
from lkmedia.probe import decode_errors, probe
from lkmedia.rpc import RedisBus
from lkmedia.rpc.client import RpcClient
from lkmedia.rpc.messages import ListActiveEgressRequest, ListActiveEgressResponse, pack_start_egress
from lkmedia.testing.egress import TERMINAL, S, egress_service, wait_egress
from lkmedia.worker import codec
from lkmedia.worker.record import JobRecord

F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux), not in Python 3.11's fcntl
SMALL = lk.EncodingOptions(width=320, height=180, framerate=15, video_bitrate=300, audio_bitrate=64)


async def test_an_output_that_stops_taking_input_fails_the_egress_and_the_rest_is_finalised(
        livekit_stack: DevStack, publisher: object, room_name: str, tmp_path: Path) -> None:
    """Was: a frozen pipeline ended COMPLETE with only an error string. Here the HLS output
    hangs as on a dead mount (its 4th segment is a pipe nobody reads: a write blocks the
    sink's thread for ever); the MP4 beside it is finalised and the egress FAILED."""
    async with egress_service(livekit_stack, tmp_path, "jobs:\n  freeze_timeout: 4s\n") as svc, \
            livekit_stack.api() as lkapi:
        info = await lkapi.egress.start_participant_egress(lk.ParticipantEgressRequest(
            room_name=room_name, identity="pub", advanced=SMALL,
            file_outputs=[lk.EncodedFileOutput(filepath="rec.mp4")],
            segment_outputs=[lk.SegmentedFileOutput(filename_prefix="hls/seg", playlist_name="index.m3u8",
                                                    segment_duration=2)]))
        await wait_egress(lkapi, info.egress_id, {S.EGRESS_ACTIVE})
        hls = Path(svc.tmp_dir) / info.egress_id / "hls"
        for _ in range(50):
            if hls.is_dir():
                break
            await asyncio.sleep(0.1)
        fifo = hls / "seg_00003.ts"  # reached ~6 s in
        os.mkfifo(fifo)
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # open, never read: the writer blocks
        fcntl.fcntl(reader, F_SETPIPE_SZ, 4096)  # once one page is written
        try:
            t0 = time.monotonic()
            done = await wait_egress(lkapi, info.egress_id, TERMINAL, timeout=40)
            took = time.monotonic() - t0
        finally:
            os.close(reader)
    assert done.status == S.EGRESS_FAILED
    assert "segments: pipeline frozen: took no input for 4 s" in done.error, done.error
    assert 4 < took < 30, took

    (f,) = done.file_results
    p = probe(f.location)
    assert p.has("video") and p.has("audio") and p.duration > 5.0 and decode_errors(f.location) == ""
    print(f"frozen HLS output: FAILED {took:.1f} s after the hang began; the MP4 beside it {p.duration:.2f} s")


async def test_a_job_process_that_stops_answering_is_killed_and_reported_with_its_recording(
        livekit_stack: DevStack, publisher: object, room_name: str, tmp_path: Path) -> None:
    """A job alive but hung (here: SIGSTOP) was noticed only when a stop timed out, and
    that only logged. Now it misses its pings, is killed and ends FAILED, partial output saved."""
    async with egress_service(livekit_stack, tmp_path, "jobs:\n  ping_timeout: 3s\n") as svc, \
            livekit_stack.api() as lkapi:
        info = await lkapi.egress.start_participant_egress(lk.ParticipantEgressRequest(
            room_name=room_name, identity="pub", advanced=SMALL,
            file_outputs=[lk.EncodedFileOutput(filepath="hung.mp4")]))
        await wait_egress(lkapi, info.egress_id, {S.EGRESS_ACTIVE})
        await asyncio.sleep(5)  # fragments written (the first video frame may come 2 s after ACTIVE)
        pid = svc.worker.jobs[info.egress_id].pid
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        done = await wait_egress(lkapi, info.egress_id, TERMINAL, timeout=40)
        took = time.monotonic() - t0
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        deadline = time.monotonic() + 10  # counted once its process has been reaped, after the status
        while 'result="killed_hung"' not in svc.metrics.render().decode():
            assert time.monotonic() < deadline, "killed_hung not counted"
            await asyncio.sleep(0.1)
    assert done.status == S.EGRESS_FAILED
    assert done.error.startswith("the egress process stopped answering for"), done.error
    assert "partial output saved: hung.mp4" in done.error, done.error
    assert 1.5 <= took < 20, took  # (its last answer came up to a ping interval before the stop)
    print(f"hung job: FAILED {took:.1f} s after SIGSTOP (ping_timeout 3 s)")
    (f,) = done.file_results
    p = probe(f.location)
    assert p.duration is not None and p.duration >= 2.0 and decode_errors(f.location) == ""


async def test_recovering_a_long_recording_does_not_delay_other_rpcs(
        livekit_stack: DevStack, room_name: str, tmp_path: Path) -> None:
    """A worker restarted beside a dead job's 1-hour recording reports it (its duration is
    read from every packet) while its event loop keeps answering RPCs within 0.3 s."""
    job_dir = tmp_path / "egress" / "EG_longgone"
    job_dir.mkdir(parents=True)
    ten = tmp_path / "ten.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=64x36:rate=30", "-t", "10",
                    "-c:v", "libx264", "-preset", "ultrafast", "-g", "30", str(ten)], check=True)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-stream_loop", "359", "-i", str(ten), "-c", "copy",
                    "-movflags", "frag_keyframe+empty_moov+default_base_moof", "-f", "mp4",
                    str(job_dir / "long.mp4")], check=True)
    spec = spec_from_request(pack_start_egress(lk.ParticipantEgressRequest(
        room_name=room_name, identity="pub", file_outputs=[lk.EncodedFileOutput(filepath="long.mp4")]),
        egress_id="EG_longgone"))
    dead = subprocess.Popen(["true"])
    dead.wait()
    JobRecord("egress", codec.encode(spec), initial_info(spec).SerializeToString(), dead.pid, "NE_gone").write(
        str(job_dir))

    async with egress_service(livekit_stack, tmp_path) as svc, livekit_stack.api() as lkapi:
        bus = RedisBus(livekit_stack.redis_address)
        await bus.start()
        client = RpcClient(bus, "EgressInternal")
        await client.start()
        latencies: list[float] = []
        try:
            health = f"http://127.0.0.1:{svc.conf.health_port}/"
            t0 = time.monotonic()
            while (JobRecord.read(str(job_dir)) is not None) and time.monotonic() - t0 < 60:
                t = time.monotonic()
                await client.call_multi("ListActiveEgress", ListActiveEgressRequest(), ListActiveEgressResponse,
                                        topic="", timeout=0.3)  # answered on the service's loop
                await asyncio.to_thread(lambda: urllib.request.urlopen(health, timeout=5).read())
                latencies.append(time.monotonic() - t - 0.3)
            recovery = time.monotonic() - t0
        finally:
            await client.close()
            await bus.close()
        done = await wait_egress(lkapi, "EG_longgone", TERMINAL, timeout=30)
    assert done.status == S.EGRESS_FAILED and "partial output saved: long.mp4 (3600.0 s)" in done.error, done.error
    assert done.file_results[0].duration / 1e9 == 3600.0
    assert recovery > 1.0 and len(latencies) >= 3, (recovery, latencies)
    assert max(latencies) < 0.3, latencies
    print(f"recovery of a 1 h MP4: {recovery:.1f} s; {len(latencies)} RPC round trips meanwhile, the slowest "
          f"{max(latencies) * 1000:.0f} ms over the 300 ms MULTI window")
