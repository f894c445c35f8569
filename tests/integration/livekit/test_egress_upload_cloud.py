"""Uploads to GCS (fake-gcs-server), Azure Blob (Azurite) and Alibaba OSS (the
signature-checking endpoint) through the real API: livekit-api -> livekit-server -> Redis
-> lkmedia EgressService -> MP4 + HLS + images -> the provider, listed back from its
server, with the manifest; per-request overrides to their own bucket with signed URLs in
the results; a bad credential failing the egress within 5 s of the call; the server
stopped mid-egress (the backup directory takes everything, EgressInfo says so).

Every test also checks that the provider's secret never reaches EgressInfo (as ListEgress
returns it) or the logs.
"""
from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import yaml
from livekit.protocol import egress as lk

from lkmedia.dev.stack import DevStack
from lkmedia.probe import decode_errors, probe
from lkmedia.testing.cloud import PROVIDERS, CloudTarget, missing
from lkmedia.testing.egress import TERMINAL, egress_service, wait_egress
from lkmedia.testing.uploads import LocalWatcher

S = lk.EgressStatus
BUCKET = "recordings"
OTHER = "override-bucket"


@pytest.fixture(params=PROVIDERS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CloudTarget]:
    why = missing(request.param)
    if why:
        pytest.fail(why)
    t = CloudTarget(request.param, tmp_path / request.param).start()
    try:
        t.create(BUCKET)
        t.create(OTHER)
        yield t
    finally:
        t.cleanup()


def storage_yaml(t: CloudTarget, backup_dir: Path, **storage: Any) -> str:
    """The Go egress's ``storage: {<provider>: ...}`` section (plus lkmedia's endpoint) and a local backup."""
    return yaml.safe_dump({"storage": {t.provider: t.yaml(BUCKET), **storage},
                           "backup": {"prefix": str(backup_dir)}})


def assert_no_secret(t: CloudTarget, *texts: Any) -> None:
    for text in texts:
        assert t.secret not in str(text), f"the {t.provider} secret leaked"


async def test_participant_egress_uploads_mp4_hls_images_and_manifest(
    livekit_stack: DevStack, target: CloudTarget, publisher: object, room_name: str, backup_dir: Path,
    tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    async with egress_service(livekit_stack, tmp_path, storage_yaml(target, backup_dir)) as service, \
            livekit_stack.api() as lkapi:
        t_call = time.monotonic()
        info = await lkapi.egress.start_participant_egress(lk.ParticipantEgressRequest(
            room_name=room_name, identity="pub",
            advanced=lk.EncodingOptions(width=640, height=360, framerate=30, video_bitrate=1000, key_frame_interval=2),
            file_outputs=[lk.EncodedFileOutput(filepath="up/{room_name}.mp4")],
            segment_outputs=[lk.SegmentedFileOutput(filename_prefix="up/hls/seg", playlist_name="index.m3u8",
                                                    segment_duration=2)],
            image_outputs=[lk.ImageOutput(capture_interval=1, width=320, height=180, filename_prefix="up/img/shot")]))
        job_dir = Path(service.tmp_dir) / info.egress_id
        watcher = LocalWatcher(job_dir, lambda key: target.size(BUCKET, key))
        watch = asyncio.create_task(asyncio.to_thread(watcher.run))
        try:
            active = await wait_egress(lkapi, info.egress_id, {S.EGRESS_ACTIVE})
            t_active = time.monotonic() - t_call
            await asyncio.sleep(4)
            live = await asyncio.to_thread(target.objects, BUCKET)  # HLS in the bucket while it records
            await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=info.egress_id))
            wall_stop, t_stop = time.time(), time.monotonic()
            done = await wait_egress(lkapi, info.egress_id, TERMINAL, timeout=30)
            t_done = time.monotonic() - t_stop
        finally:
            watcher.stop()
            await watch
    assert done.status == S.EGRESS_COMPLETE, done.error
    assert not done.backup_storage_used
    stored = target.objects(BUCKET)
    mp4_key = f"up/{room_name}.mp4"

    (f,) = done.file_results
    assert f.location == target.location(BUCKET, mp4_key)
    assert stored[mp4_key] == f.size > 0
    mp4 = tmp_path / "dl" / "out.mp4"
    target.download(BUCKET, mp4_key, mp4)
    p = probe(str(mp4))
    assert p.has("video") and p.has("audio") and p.stream("video").codec == "h264"
    window = wall_stop - active.updated_at / 1e9
    assert p.duration == pytest.approx(window, abs=0.5), (p.duration, window)
    assert decode_errors(str(mp4)) == ""

    assert [k for k in live if k.startswith("up/hls/") and k.endswith(".ts")], sorted(live)
    assert "up/hls/index.m3u8" in live, sorted(live)
    (seg,) = done.segment_results
    assert seg.playlist_location == target.location(BUCKET, "up/hls/index.m3u8")
    seg_keys = sorted(k for k in stored if k.endswith(".ts"))
    assert len(seg_keys) == seg.segment_count >= 2
    for k in [*seg_keys, "up/hls/index.m3u8"]:
        target.download(BUCKET, k, tmp_path / "dl" / k)
    playlist = (tmp_path / "dl" / "up/hls/index.m3u8").read_text()
    assert "#EXT-X-ENDLIST" in playlist
    assert sorted(f"up/hls/{x}" for x in playlist.splitlines() if x and not x.startswith("#")) == seg_keys
    h = probe(str(tmp_path / "dl" / "up/hls/index.m3u8"))
    assert h.has("video") and h.has("audio") and h.duration == pytest.approx(window, abs=0.5)

    (img,) = done.image_results
    jpegs = sorted(k for k in stored if k.startswith("up/img/") and k.endswith(".jpeg"))
    assert len(jpegs) == img.image_count >= 3, (jpegs, img.image_count)

    man_key = f"up/{info.egress_id}.json"
    assert done.manifest_location == target.location(BUCKET, man_key) and man_key in stored
    man = json.loads(target.download(BUCKET, man_key))
    assert man["egress_id"] == info.egress_id and man["room_name"] == room_name
    assert {"filename": mp4_key, "location": f.location} in man["files"]
    (pl,) = man["playlists"]
    assert pl["location"] == seg.playlist_location
    assert sorted(x["filename"] for x in pl["segments"]) == seg_keys
    # every stored image, as the Go egress's manifest lists them (name, time, where)
    assert sorted(x["filename"] for x in man["images"]) == jpegs, man.get("images")
    assert all(x["location"] == target.location(BUCKET, x["filename"]) and x["timestamp"] for x in man["images"])

    # local copies: gone, each only once its object was stored at full size
    left = [str(x) for x in job_dir.rglob("*") if x.is_file()] if job_dir.exists() else []
    assert not left, left
    finals = {k: v for k, v in watcher.vanished.items() if k in stored}
    assert mp4_key in finals and set(seg_keys) <= set(finals), (sorted(watcher.vanished), sorted(stored))
    for name, (local_size, obj_size) in finals.items():
        assert obj_size is not None and obj_size >= local_size, (name, local_size, obj_size)
    assert not any(backup_dir.rglob("*.*"))
    assert_no_secret(target, done, logs.text)
    print(f"{target.provider}: API call -> ACTIVE {t_active:.2f} s, StopEgress -> COMPLETE {t_done:.2f} s; "
          f"MP4 {p.duration:.2f} s, {seg.segment_count} segments, {img.image_count} images, {len(stored)} objects")


async def test_request_overrides_go_to_their_own_bucket_with_signed_urls(
    livekit_stack: DevStack, target: CloudTarget, publisher: object, room_name: str, backup_dir: Path,
    tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    field, upload = target.request(OTHER)
    extra = storage_yaml(target, backup_dir, generate_presigned_url=True)
    async with egress_service(livekit_stack, tmp_path, extra), livekit_stack.api() as lkapi:
        info = await lkapi.egress.start_participant_egress(lk.ParticipantEgressRequest(
            room_name=room_name, identity="pub",
            file_outputs=[lk.EncodedFileOutput(filepath="mine/{room_name}.mp4", **{field: upload})],
            segment_outputs=[lk.SegmentedFileOutput(filename_prefix="mine/hls/seg", playlist_name="index.m3u8",
                                                    segment_duration=2, **{field: upload})],
            # no storage of its own: the server's bucket, as in the Go egress
            image_outputs=[lk.ImageOutput(capture_interval=1, width=320, height=180,
                                          filename_prefix="theirs/img/shot")]))
        await wait_egress(lkapi, info.egress_id, {S.EGRESS_ACTIVE})
        await asyncio.sleep(2.5)
        await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=info.egress_id))
        done = await wait_egress(lkapi, info.egress_id, TERMINAL, timeout=30)
    assert done.status == S.EGRESS_COMPLETE, done.error
    mine, default = target.objects(OTHER), target.objects(BUCKET)
    key = f"mine/{room_name}.mp4"
    assert key in mine and key not in default
    target.download(OTHER, key, tmp_path / "o.mp4")
    p = probe(str(tmp_path / "o.mp4"))
    assert p.has("video") and p.has("audio") and p.duration == pytest.approx(2.5, abs=0.8)
    (seg,) = done.segment_results
    assert "mine/hls/index.m3u8" in mine and sum(k.endswith(".ts") for k in mine) == seg.segment_count >= 1
    (img,) = done.image_results
    jpegs = [k for k in default if k.startswith("theirs/img/") and k.endswith(".jpeg")]
    assert len(jpegs) == img.image_count >= 2
    assert not any(k.startswith("mine/") for k in default) and not any(k.startswith("theirs/") for k in mine)
    # generate_presigned_url: the results carry signed URLs that read the objects
    assert_signed(target, done.file_results[0].location, OTHER, key)
    assert_signed(target, seg.playlist_location, OTHER, "mine/hls/index.m3u8")
    assert done.manifest_location.split("?", 1)[0].endswith(f"/{OTHER}/mine/{info.egress_id}.json")
    # the request kept in EgressInfo names the bucket, not the secret
    out = getattr(done.participant.file_outputs[0], field)
    assert (out.container_name if target.provider == "azure" else out.bucket) == OTHER
    assert not done.backup_storage_used
    assert_no_secret(target, done, info, logs.text)


def assert_signed(t: CloudTarget, url: str, bucket: str, key: str) -> None:
    q = dict(parse_qsl(urlsplit(url).query))
    if t.provider == "gcp":
        assert url.startswith(f"https://storage.googleapis.com/{bucket}/{key}?") and "X-Goog-Signature" in q
        return
    assert url.split("?", 1)[0] == t.location(bucket, key)
    assert "sig" in q if t.provider == "azure" else "x-oss-signature" in q
    with urllib.request.urlopen(url) as r:  # the server checks the signature
        assert r.read() == t.download(bucket, key)


async def test_bad_credential_or_bucket_fails_within_5_s(
    livekit_stack: DevStack, target: CloudTarget, publisher: object, room_name: str, backup_dir: Path,
    tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    """GCS: fake-gcs-server takes any credentials, so the bad one is a malformed key
    (refused by lkmedia) and the bucket is one that does not exist (refused by the server).
    The bad bucket is an image output's own storage: every output's storage is tried."""
    cases = [(target.request(OTHER, bad=True), target.bad_credential_reason(), "file"),
             (target.request("no-such-bucket"), "does not exist", "images")]
    timings = []
    async with egress_service(livekit_stack, tmp_path, storage_yaml(target, backup_dir)), \
            livekit_stack.api() as lkapi:
        for (field, upload), why, output in cases:
            t0 = time.monotonic()
            outputs: dict[str, Any] = (
                {"file_outputs": [lk.EncodedFileOutput(filepath="bad.mp4", **{field: upload})]} if output == "file"
                else {"file_outputs": [lk.EncodedFileOutput(filepath="good.mp4")],
                      "image_outputs": [lk.ImageOutput(capture_interval=1, filename_prefix="bad/img",
                                                       **{field: upload})]})
            info = await lkapi.egress.start_participant_egress(lk.ParticipantEgressRequest(
                room_name=room_name, identity="pub", **outputs))
            failed = await wait_egress(lkapi, info.egress_id, TERMINAL, timeout=15)
            took = time.monotonic() - t0
            timings.append(took)
            assert failed.status == S.EGRESS_FAILED, failed
            assert took < 5.0, took
            assert why in failed.error, failed.error
            assert_no_secret(target, failed, info, logs.text)
            secret = getattr(upload, "secret", "") or getattr(upload, "account_key", "")
            assert not secret or secret not in failed.error + logs.text
    print(f"{target.provider}: API call -> FAILED " + ", ".join(f"{t:.2f} s" for t in timings))


async def test_server_stopped_mid_egress_loses_nothing(
    livekit_stack: DevStack, target: CloudTarget, publisher: object, room_name: str, backup_dir: Path,
    tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    async with egress_service(livekit_stack, tmp_path, storage_yaml(target, backup_dir)) as service, \
            livekit_stack.api() as lkapi:
        info = await lkapi.egress.start_participant_egress(lk.ParticipantEgressRequest(
            room_name=room_name, identity="pub",
            file_outputs=[lk.EncodedFileOutput(filepath="lost/{room_name}.mp4")],
            segment_outputs=[lk.SegmentedFileOutput(filename_prefix="lost/hls/seg", playlist_name="index.m3u8",
                                                    segment_duration=2)]))
        active = await wait_egress(lkapi, info.egress_id, {S.EGRESS_ACTIVE})
        await asyncio.sleep(1.5)
        await asyncio.to_thread(target.process.stop)  # and it stays down
        await asyncio.sleep(2.5)
        await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=info.egress_id))
        t_stop, wall_stop = time.monotonic(), time.time()
        done = await wait_egress(lkapi, info.egress_id, TERMINAL, timeout=45)
        t_end = time.monotonic()
        job_dir = Path(service.tmp_dir) / info.egress_id
    assert done.status == S.EGRESS_COMPLETE, done.error
    assert done.backup_storage_used
    mp4 = backup_dir / "lost" / f"{room_name}.mp4"
    (f,) = done.file_results
    assert f.location == str(mp4) and mp4.stat().st_size == f.size > 0
    p = probe(str(mp4))
    window = wall_stop - active.updated_at / 1e9
    assert p.has("video") and p.has("audio") and p.duration == pytest.approx(window, abs=0.5)
    assert decode_errors(str(mp4)) == ""
    (seg,) = done.segment_results
    playlist = backup_dir / "lost" / "hls" / "index.m3u8"
    assert seg.playlist_location == str(playlist)
    # every segment is somewhere: in the bucket (before the stop) or in the backup
    target.process.start()
    in_bucket = {k.rsplit("/", 1)[1] for k in target.objects(BUCKET) if k.endswith(".ts")}
    in_backup = {x.name for x in playlist.parent.glob("*.ts")}
    listed = {x for x in playlist.read_text().splitlines() if x and not x.startswith("#")}
    assert listed == in_bucket | in_backup and len(listed) == seg.segment_count >= 2, (listed, in_bucket, in_backup)
    man = json.loads(Path(done.manifest_location).read_text())
    assert done.manifest_location.startswith(str(backup_dir))
    assert {"filename": f"lost/{room_name}.mp4", "location": str(mp4)} in man["files"]
    assert not job_dir.exists() or not [x for x in job_dir.rglob("*") if x.is_file()]
    assert_no_secret(target, done, logs.text)
    print(f"{target.provider} down: {S.Name(done.status)} {t_end - t_stop:.1f} s after StopEgress; "
          f"MP4 {p.duration:.2f} s in backup; {len(in_bucket)} segments uploaded before, {len(in_backup)} in backup")
