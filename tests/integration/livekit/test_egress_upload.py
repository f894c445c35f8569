"""Uploads through the real API: livekit-api -> livekit-server -> Redis -> lkmedia
EgressService -> MP4 + HLS -> S3 (a real MinIO) with the manifest, per-request S3
overrides, bad buckets and credentials failing at start, and MinIO dying mid-egress
(the backup directory keeps everything, EgressInfo says so).

Every test also checks that the S3 secret never reaches EgressInfo (as ListEgress
returns it) or the logs.
"""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from livekit.protocol import egress as lk

from lkmedia.dev.stack import DevStack
from lkmedia.probe import decode_errors, probe
from lkmedia.service.config import parse_config
from lkmedia.service.egress import EgressService
from lkmedia.testing.egress import TERMINAL, egress_service, wait_egress
from lkmedia.testing.s3_server import MinioServer, minio_binary
from lkmedia.testing.uploads import LocalWatcher

S = lk.EgressStatus
BUCKET = "recordings"
OTHER = "override-bucket"


@pytest.fixture
def minio(tmp_path: Path) -> Iterator[MinioServer]:
    if minio_binary() is None:
        pytest.fail("MinIO is not installed (scripts/install_s3_server.sh builds it)")
    srv = MinioServer(root=tmp_path / "minio")
    srv.start()
    try:
        srv.create_bucket(BUCKET)
        srv.create_bucket(OTHER)
        yield srv
    finally:
        srv.kill()


@pytest.fixture
async def service(livekit_stack: DevStack, minio: MinioServer, backup_dir: Path, tmp_path: Path,
                  logs: pytest.LogCaptureFixture) -> AsyncIterator[EgressService]:
    """The service with a Go-egress ``storage: {s3: ...}`` section and a local ``backup:``."""
    storage = ("storage:\n  s3:\n"
               f"    access_key: {minio.access_key}\n    secret: {minio.secret}\n"
               f"    endpoint: {minio.endpoint}\n    bucket: {BUCKET}\n"
               "    force_path_style: true\n    region: us-east-1\n"
               f"backup:\n  prefix: {backup_dir}\n")
    async with egress_service(livekit_stack, tmp_path, storage) as svc:
        yield svc


def assert_no_secret(secret: str, *texts: Any) -> None:
    for t in texts:
        assert secret not in str(t), "the S3 secret leaked"


def s3_request(minio: MinioServer, bucket: str, secret: str | None = None) -> lk.S3Upload:
    return lk.S3Upload(access_key=minio.access_key, secret=secret or minio.secret, endpoint=minio.endpoint,
                       bucket=bucket, force_path_style=True, region="us-east-1")


def download(minio: MinioServer, bucket: str, key: str, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    minio.client().download_file(bucket, key, str(dest))
    return dest


def keys(minio: MinioServer, bucket: str) -> dict[str, int]:
    res = minio.client().list_objects_v2(Bucket=bucket)
    return {o["Key"]: o["Size"] for o in res.get("Contents", [])}


def head_size(minio: MinioServer, bucket: str) -> Any:
    client = minio.client()
    return lambda key: int(client.head_object(Bucket=bucket, Key=key)["ContentLength"])


async def test_participant_egress_uploads_mp4_hls_and_manifest_to_s3(
    livekit_stack: DevStack, service: EgressService, publisher: object, room_name: str, minio: MinioServer,
    backup_dir: Path, tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    async with livekit_stack.api() as lkapi:
        info = await lkapi.egress.start_participant_egress(lk.ParticipantEgressRequest(
            room_name=room_name, identity="pub",
            advanced=lk.EncodingOptions(width=640, height=360, framerate=30, video_bitrate=1000, key_frame_interval=2),
            file_outputs=[lk.EncodedFileOutput(filepath="up/{room_name}.mp4")],
            segment_outputs=[lk.SegmentedFileOutput(filename_prefix="up/hls/seg", playlist_name="index.m3u8",
                                                    segment_duration=2)],
            image_outputs=[lk.ImageOutput(capture_interval=1, width=320, height=180, filename_prefix="up/img/shot")]))
        job_dir = Path(service.tmp_dir) / info.egress_id
        watcher = LocalWatcher(job_dir, head_size(minio, BUCKET))
        watch = asyncio.create_task(asyncio.to_thread(watcher.run))
        try:
            active = await wait_egress(lkapi, info.egress_id, {S.EGRESS_ACTIVE})
            await asyncio.sleep(4)
            # Live HLS: segments and the playlist are in the bucket while it records.
            live = await asyncio.to_thread(keys, minio, BUCKET)
            await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=info.egress_id))
            wall_stop = time.time()
            done = await wait_egress(lkapi, info.egress_id, TERMINAL, timeout=30)
        finally:
            watcher.stop()
            await watch
    assert done.status == S.EGRESS_COMPLETE, done.error
    assert not done.backup_storage_used
    stored = keys(minio, BUCKET)
    mp4_key = f"up/{room_name}.mp4"

    # the MP4: in the bucket, where EgressInfo says, the size EgressInfo says, playable
    (f,) = done.file_results
    assert f.location == f"{minio.endpoint}/{BUCKET}/{mp4_key}"
    assert stored[mp4_key] == f.size > 0
    mp4 = download(minio, BUCKET, mp4_key, tmp_path / "dl" / "out.mp4")
    p = probe(str(mp4))
    assert p.has("video") and p.has("audio") and p.stream("video").codec == "h264"
    # ACTIVE as the service stamped it (EgressInfo.updated_at), not as our 0.1 s polling saw it
    window = wall_stop - active.updated_at / 1e9
    assert p.duration == pytest.approx(window, abs=0.5), (p.duration, window)
    assert decode_errors(str(mp4)) == ""

    live_segments = [k for k in live if k.startswith("up/hls/") and k.endswith(".ts")]
    assert live_segments and "up/hls/index.m3u8" in live, sorted(live)
    # the HLS set: playlist and every segment it lists
    (seg,) = done.segment_results
    assert seg.playlist_location == f"{minio.endpoint}/{BUCKET}/up/hls/index.m3u8"
    seg_keys = sorted(k for k in stored if k.endswith(".ts"))
    assert len(seg_keys) == seg.segment_count >= 2
    for k in [*seg_keys, "up/hls/index.m3u8"]:
        download(minio, BUCKET, k, tmp_path / "dl" / k)
    playlist = (tmp_path / "dl" / "up/hls/index.m3u8").read_text()
    assert "#EXT-X-ENDLIST" in playlist
    listed = [ln for ln in playlist.splitlines() if ln and not ln.startswith("#")]
    assert sorted(f"up/hls/{x}" for x in listed) == seg_keys
    h = probe(str(tmp_path / "dl" / "up/hls/index.m3u8"))
    assert h.has("video") and h.has("audio")
    assert h.duration == pytest.approx(window, abs=0.5), (h.duration, window)

    # the images: every JPEG the result counts, in the bucket
    (img,) = done.image_results
    jpegs = sorted(k for k in stored if k.startswith("up/img/") and k.endswith(".jpeg"))
    assert len(jpegs) == img.image_count >= 3, (jpegs, img.image_count)

    # the manifest: where manifest_location says, listing the file with its location
    assert done.manifest_location.startswith(f"{minio.endpoint}/{BUCKET}/")
    man_key = done.manifest_location.split(f"/{BUCKET}/", 1)[1]
    assert man_key.endswith(f"{info.egress_id}.json") and man_key in stored
    man = json.loads(download(minio, BUCKET, man_key, tmp_path / "dl" / "manifest.json").read_text())
    assert man["egress_id"] == info.egress_id and man["room_name"] == room_name
    assert {"filename": mp4_key, "location": f.location} in man["files"]
    (pl,) = man["playlists"]
    assert pl["location"] == seg.playlist_location
    assert sorted(x["filename"] for x in pl["segments"]) == seg_keys
    assert all(x["location"] == f"{minio.endpoint}/{BUCKET}/{x['filename']}" for x in pl["segments"])

    # local copies: gone, each only once its object was in the bucket at full size
    left = [str(x) for x in job_dir.rglob("*") if x.is_file()] if job_dir.exists() else []
    assert not left, left
    finals = {k: v for k, v in watcher.vanished.items() if k in stored}
    assert mp4_key in finals and set(seg_keys) <= set(finals), (sorted(watcher.vanished), sorted(stored))
    for name, (local_size, obj_size) in finals.items():
        assert obj_size is not None and obj_size >= local_size, (name, local_size, obj_size)
    assert not any(backup_dir.rglob("*.*"))  # the backup stayed unused
    assert_no_secret(minio.secret, done, logs.text)
    print(f"MP4 {p.duration:.2f} s, HLS {h.duration:.2f} s ({seg.segment_count} segments), "
          f"ACTIVE->Stop {window:.2f} s; objects {sorted(stored)}")


async def test_request_s3_override_goes_to_its_own_bucket(
    livekit_stack: DevStack, service: EgressService, publisher: object, room_name: str, minio: MinioServer,
    tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    async with livekit_stack.api() as lkapi:
        info = await lkapi.egress.start_participant_egress(lk.ParticipantEgressRequest(
            room_name=room_name, identity="pub",
            file_outputs=[lk.EncodedFileOutput(filepath="mine/{room_name}.mp4", s3=s3_request(minio, OTHER))],
            # no storage of its own: the server's bucket, as in the Go egress
            segment_outputs=[lk.SegmentedFileOutput(filename_prefix="theirs/seg", playlist_name="index.m3u8",
                                                    segment_duration=2)]))
        await wait_egress(lkapi, info.egress_id, {S.EGRESS_ACTIVE})
        await asyncio.sleep(2.5)
        await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=info.egress_id))
        done = await wait_egress(lkapi, info.egress_id, TERMINAL, timeout=30)
    assert done.status == S.EGRESS_COMPLETE, done.error
    key = f"mine/{room_name}.mp4"
    assert done.file_results[0].location == f"{minio.endpoint}/{OTHER}/{key}"
    assert key in keys(minio, OTHER) and key not in keys(minio, BUCKET)
    assert done.manifest_location == f"{minio.endpoint}/{OTHER}/mine/{info.egress_id}.json"
    p = probe(str(download(minio, OTHER, key, tmp_path / "o.mp4")))
    assert p.has("video") and p.has("audio") and p.duration == pytest.approx(2.5, abs=0.8)
    (seg,) = done.segment_results
    assert seg.playlist_location == f"{minio.endpoint}/{BUCKET}/theirs/index.m3u8"
    default = keys(minio, BUCKET)
    assert "theirs/index.m3u8" in default and sum(k.endswith(".ts") for k in default) == seg.segment_count >= 1
    assert not any(k.startswith("theirs/") for k in keys(minio, OTHER))
    assert not done.backup_storage_used
    # the request stored in EgressInfo keeps the bucket, not the secret
    assert done.participant.file_outputs[0].s3.bucket == OTHER
    assert_no_secret(minio.secret, done, info, logs.text)


async def test_bad_bucket_or_credentials_fail_at_start_and_the_service_keeps_serving(
    livekit_stack: DevStack, service: EgressService, publisher: object, room_name: str, minio: MinioServer,
    logs: pytest.LogCaptureFixture
) -> None:
    wrong_secret = "wrong-" + minio.secret[::-1]
    cases = [("no-such-bucket-xyz", minio.secret, "no-such-bucket-xyz", "does not exist"),
             (OTHER, wrong_secret, OTHER, "secret does not match")]
    timings = []
    async with livekit_stack.api() as lkapi:
        for bucket, secret, named, why in cases:
            t0 = time.monotonic()
            info = await lkapi.egress.start_participant_egress(lk.ParticipantEgressRequest(
                room_name=room_name, identity="pub",
                file_outputs=[lk.EncodedFileOutput(filepath="bad.mp4", s3=s3_request(minio, bucket, secret))]))
            failed = await wait_egress(lkapi, info.egress_id, TERMINAL, timeout=15)
            took = time.monotonic() - t0
            timings.append(took)
            assert failed.status == S.EGRESS_FAILED, failed
            assert took < 5.0, took
            assert named in failed.error and why in failed.error, failed.error
            assert_no_secret(secret, failed, info, logs.text)
            assert_no_secret(minio.secret, failed)
        # the next good request still works
        ok = await lkapi.egress.start_participant_egress(lk.ParticipantEgressRequest(
            room_name=room_name, identity="pub", file_outputs=[lk.EncodedFileOutput(filepath="ok.mp4")]))
        await wait_egress(lkapi, ok.egress_id, {S.EGRESS_ACTIVE})
        await asyncio.sleep(1)
        await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=ok.egress_id))
        done = await wait_egress(lkapi, ok.egress_id, TERMINAL, timeout=30)
    assert done.status == S.EGRESS_COMPLETE, done.error
    assert "ok.mp4" in keys(minio, BUCKET)
    assert_no_secret(minio.secret, done, logs.text)
    print("API call -> FAILED: " + ", ".join(f"{t:.2f} s" for t in timings))


async def test_s3_server_stopped_mid_egress_loses_nothing(
    livekit_stack: DevStack, service: EgressService, publisher: object, room_name: str, minio: MinioServer,
    backup_dir: Path, logs: pytest.LogCaptureFixture
) -> None:
    async with livekit_stack.api() as lkapi:
        info = await lkapi.egress.start_participant_egress(lk.ParticipantEgressRequest(
            room_name=room_name, identity="pub",
            file_outputs=[lk.EncodedFileOutput(filepath="lost/{room_name}.mp4")],
            segment_outputs=[lk.SegmentedFileOutput(filename_prefix="lost/hls/seg", playlist_name="index.m3u8",
                                                    segment_duration=2)]))
        active = await wait_egress(lkapi, info.egress_id, {S.EGRESS_ACTIVE})
        await asyncio.sleep(1.5)
        await asyncio.to_thread(minio.stop)  # and it stays down
        await asyncio.sleep(2.5)
        await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=info.egress_id))
        t_stop, wall_stop = time.monotonic(), time.time()
        done = await wait_egress(lkapi, info.egress_id, TERMINAL, timeout=45)
        t_end = time.monotonic()
    assert done.status == S.EGRESS_COMPLETE, done.error
    assert done.backup_storage_used
    mp4 = backup_dir / "lost" / f"{room_name}.mp4"
    (f,) = done.file_results
    assert f.location == str(mp4) and mp4.stat().st_size == f.size > 0
    p = probe(str(mp4))
    assert p.has("video") and p.has("audio")
    # ACTIVE as the service stamped it (EgressInfo.updated_at), not as our 0.1 s polling saw it
    window = wall_stop - active.updated_at / 1e9
    assert p.duration == pytest.approx(window, abs=0.5), (p.duration, window)
    assert decode_errors(str(mp4)) == ""
    (seg,) = done.segment_results
    playlist = backup_dir / "lost" / "hls" / "index.m3u8"
    assert seg.playlist_location == str(playlist)
    segs = sorted(playlist.parent.glob("*.ts"))
    assert len(segs) == seg.segment_count >= 2
    h = probe(str(playlist))
    assert h.has("video") and h.has("audio") and h.duration == pytest.approx(p.duration, abs=0.5)
    man = json.loads(Path(done.manifest_location).read_text())
    assert done.manifest_location.startswith(str(backup_dir))
    assert {"filename": f"lost/{room_name}.mp4", "location": str(mp4)} in man["files"]
    # nothing is left behind locally either: everything went to the backup, confirmed
    job_dir = Path(service.tmp_dir) / info.egress_id
    assert not job_dir.exists() or not [x for x in job_dir.rglob("*") if x.is_file()]
    assert_no_secret(minio.secret, done, logs.text)
    print(f"S3 down: {S.Name(done.status)} {t_end - t_stop:.1f} s after StopEgress; error={done.error!r}; "
          f"MP4 {p.duration:.2f} s in backup (ACTIVE->Stop {window:.2f} s); HLS {seg.segment_count} segments")


async def test_s3_down_without_backup_keeps_the_local_file_and_says_so(
    livekit_stack: DevStack, publisher: object, room_name: str, minio: MinioServer, tmp_path: Path,
    logs: pytest.LogCaptureFixture
) -> None:
    """No ``backup:``: the egress ends FAILED (as the Go egress), the recording stays on local
    disk, EgressInfo points at it and the error names the bucket (``max_retries`` /
    ``max_retry_delay`` from the Go keys keep it short)."""
    body = (f"api_key: {livekit_stack.api_key}\napi_secret: {livekit_stack.api_secret}\n"
            f"ws_url: {livekit_stack.url}\nredis:\n  address: {livekit_stack.redis_address}\n"
            "storage:\n  s3:\n"
            f"    access_key: {minio.access_key}\n    secret: {minio.secret}\n"
            f"    endpoint: {minio.endpoint}\n    bucket: {BUCKET}\n"
            "    force_path_style: true\n    region: us-east-1\n    max_retries: 1\n    max_retry_delay: 200ms\n")
    svc = EgressService(parse_config(body), tmp_dir=str(tmp_path / "egress"))
    await svc.start()
    try:
        async with livekit_stack.api() as lkapi:
            info = await lkapi.egress.start_participant_egress(lk.ParticipantEgressRequest(
                room_name=room_name, identity="pub", file_outputs=[lk.EncodedFileOutput(filepath="kept.mp4")]))
            await wait_egress(lkapi, info.egress_id, {S.EGRESS_ACTIVE})
            await asyncio.to_thread(minio.stop)
            await asyncio.sleep(2)
            await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=info.egress_id))
            done = await wait_egress(lkapi, info.egress_id, TERMINAL, timeout=30)
    finally:
        await svc.close(drain_timeout=30)
    # As the Go egress: an output that reached no storage fails the egress; the file is kept.
    assert done.status == S.EGRESS_FAILED, S.Name(done.status)
    assert not done.backup_storage_used
    (f,) = done.file_results
    local = Path(svc.tmp_dir) / info.egress_id / "kept.mp4"
    assert f.location == str(local) and local.stat().st_size == f.size > 0
    p = probe(str(local))
    assert p.has("video") and p.has("audio") and p.duration > 1.5
    assert BUCKET in done.error and "kept at" in done.error and str(local) in done.error, done.error
    assert_no_secret(minio.secret, done, logs.text)
