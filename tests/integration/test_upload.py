"""Uploads against a real MinIO: what lands in the bucket is downloaded and probed, the
manifest is read back, bad buckets and keys fail preflight fast without leaking the
secret, and a server taken away mid-upload loses nothing (retries, then the backup,
then the local file is kept)."""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lkmedia.core import Graph
from lkmedia.nodes.encode import AudioEncoder, VideoEncoder
from lkmedia.probe import decode_errors, probe
from lkmedia.sinks.file import FileSink
from lkmedia.sinks.segments import HLSSink
from lkmedia.sources.synthetic import SyntheticSource
from lkmedia.storage import (
    LocalStorage,
    Manifest,
    S3Config,
    S3Storage,
    SegmentUploader,
    StorageConfigError,
    StorageError,
    Uploader,
    settings_from_yaml,
)
from lkmedia.testing.rtmp_server import free_port
from lkmedia.testing.s3_server import MinioServer, minio_binary

pytestmark = [pytest.mark.integration, pytest.mark.skipif(minio_binary() is None,
                                                          reason="MinIO not installed (scripts/setup.sh)")]
BUCKET = "recordings"
MIB = 1 << 20


def sha(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def minio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioServer]:
    server = MinioServer(tmp_path_factory.mktemp("minio"))
    server.start()
    server.create_bucket(BUCKET)
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def own_minio(tmp_path: Path) -> Iterator[MinioServer]:
    """A server of this test's own, which it may kill."""
    server = MinioServer(tmp_path / "minio")
    server.start()
    server.create_bucket(BUCKET)
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 2 s MP4 (H.264 + AAC) recorded by lkmedia."""
    path = tmp_path_factory.mktemp("rec") / "room_recording.mp4"

    async def record() -> None:
        g = Graph()
        src = SyntheticSource(width=640, height=360, fps=30, duration=2.0)
        v = VideoEncoder(width=640, height=360, fps=30, bitrate=800_000, keyframe_interval=1)
        a = AudioEncoder("aac")
        sink = FileSink(str(path))
        g.link(src.out("video"), v)
        g.link(src.out("audio"), a)
        g.link(v, sink)
        g.link(a, sink)
        assert await g.run() == []

    asyncio.run(record())
    return path


def copy_of(src: Path, dst_dir: Path, name: str | None = None) -> Path:
    dst = dst_dir / (name or src.name)
    shutil.copyfile(src, dst)
    return dst


def big_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


async def test_mp4_upload_lands_whole_plays_and_manifest_lists_it(
        minio: MinioServer, recording: Path, tmp_path: Path) -> None:
    local = copy_of(recording, tmp_path)
    digest = sha(local)
    storage = S3Storage(minio.s3_config(BUCKET, metadata={"room": "demo"}, tagging="kind=test"), prefix="egress")
    async with Uploader(storage, delete_after_upload=True) as up:
        await up.preflight(timeout=5.0)
        res = await up.upload_file(str(local), "2026/room_recording.mp4")
        assert res.stored and not res.backup_storage_used and res.error is None
        assert res.key == "egress/2026/room_recording.mp4"
        assert res.location == f"{minio.endpoint}/{BUCKET}/egress/2026/room_recording.mp4"
        assert res.size == recording.stat().st_size
        assert res.local_deleted and not local.exists()

        manifest = Manifest(egress_id="EG_upload1", room_id="RM_1", room_name="demo", started_at=1_700_000_000 * 10**9,
                            publisher_identity="alice", audio_track_id="TR_a", video_track_id="TR_v")
        manifest.add_file(res.filename, res.location)  # the storage path, without the prefix
        mres = await manifest.upload(up, "2026/room_recording.mp4", ended_at=1_700_000_002 * 10**9)
        assert mres.stored and mres.key == "egress/2026/EG_upload1.json"

    down = tmp_path / "down.mp4"
    s3 = minio.client()
    s3.download_file(BUCKET, res.key, str(down))
    assert sha(down) == digest
    p = probe(str(down))
    assert p.stream("video").codec == "h264" and p.stream("audio").codec == "aac"
    assert p.duration is not None and abs(p.duration - 2.0) < 0.2
    assert decode_errors(str(down)) == ""
    head = s3.head_object(Bucket=BUCKET, Key=res.key)
    assert head["ContentType"] == "video/mp4" and head["ContentDisposition"] == "inline"
    assert head["Metadata"] == {"room": "demo"}
    assert s3.get_object_tagging(Bucket=BUCKET, Key=res.key)["TagSet"] == [{"Key": "kind", "Value": "test"}]

    raw = s3.get_object(Bucket=BUCKET, Key=mres.key)["Body"].read()
    assert raw.endswith(b"\n")
    m = json.loads(raw)
    assert list(m) == ["egress_id", "room_id", "room_name", "started_at", "ended_at", "publisher_identity",
                       "audio_track_id", "video_track_id", "files"]
    assert m["egress_id"] == "EG_upload1" and m["started_at"] == 1_700_000_000 * 10**9
    assert m["ended_at"] == 1_700_000_002 * 10**9
    assert m["files"] == [{"filename": "2026/room_recording.mp4", "location": res.location}]
    # the preflight probe object was removed
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert not [k for k in keys if "preflight" in k]


async def test_hls_segments_upload_as_they_finish(minio: MinioServer, tmp_path: Path) -> None:
    hls_dir = tmp_path / "hls"
    storage = S3Storage(minio.s3_config(BUCKET), prefix="live")
    manifest = Manifest(egress_id="EG_hls1", room_name="demo")
    playlist = manifest.add_playlist()
    async with Uploader(storage, delete_after_upload=True, max_queue=4) as up:
        hook = SegmentUploader(up, str(hls_dir), playlists=["index.m3u8", "index-live.m3u8"],
                               storage_dir="show", manifest=playlist)
        g = Graph()
        src = SyntheticSource(width=320, height=240, fps=30, duration=4.0, live=True)
        v = VideoEncoder(width=320, height=240, fps=30, bitrate=300_000, keyframe_interval=1)
        a = AudioEncoder("aac")
        sink = HLSSink(str(hls_dir), playlist_name="index.m3u8", live_playlist_name="index-live.m3u8",
                       segment_duration=1.0, on_segment=hook)
        g.link(src.out("video"), v)
        g.link(src.out("audio"), a)
        g.link(v, sink)
        g.link(a, sink)
        assert await g.run() == []
        uploaded_while_recording = len(hook.segments)
        summary = await hook.finish()
        mres = await manifest.upload(up, "show/index.m3u8")
    n = sink.result.segment_count
    assert n >= 4
    assert uploaded_while_recording >= n - 2, "segments were not uploaded as they finished"
    assert summary["segment_count"] == n == summary["segments_stored"]
    assert not summary["backup_storage_used"] and not summary["errors"]
    assert not list(hls_dir.glob("*.ts")), "uploaded segments are deleted locally"

    s3 = minio.client()
    got = tmp_path / "got"
    got.mkdir()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="live/show/").get("Contents", [])]
    assert "live/show/index.m3u8" in keys and "live/show/index-live.m3u8" in keys
    for k in keys:
        s3.download_file(BUCKET, k, str(got / os.path.basename(k)))
    assert (got / "index.m3u8").read_bytes() == (hls_dir / "index.m3u8").read_bytes()
    assert "#EXT-X-ENDLIST" in (got / "index.m3u8").read_text()
    p = probe(str(got / "index.m3u8"))
    assert p.duration is not None and abs(p.duration - 4.0) < 0.5
    assert p.has("video") and p.has("audio")
    assert decode_errors(str(got / "index.m3u8")) == ""

    m = json.loads(s3.get_object(Bucket=BUCKET, Key=mres.key)["Body"].read())
    assert mres.key == "live/show/EG_hls1.json"
    assert m["playlists"][0]["location"] == f"{minio.endpoint}/{BUCKET}/live/show/index.m3u8"
    segs = m["playlists"][0]["segments"]
    assert len(segs) == n and segs[0]["filename"] == "show/00000.ts"
    assert segs[0]["location"] == f"{minio.endpoint}/{BUCKET}/live/show/00000.ts"


async def test_preflight_fails_fast_naming_the_bucket_never_the_secret(minio: MinioServer) -> None:
    cases: list[tuple[S3Config, str]] = [
        (minio.s3_config("no-such-bucket-lkm"), "does not exist"),
        (minio.s3_config(BUCKET, secret="Wr0ngSecretValue-abcdef123"), "secret does not match"),
        (minio.s3_config(BUCKET, access_key="UNKNOWNKEY123456", secret="An0therSecret-xyz987"), "not known"),
        (minio.s3_config(BUCKET, endpoint=f"http://127.0.0.1:{free_port()}"), "failed"),
    ]
    for conf, reason in cases:
        storage = S3Storage(conf)
        t0 = time.monotonic()
        with pytest.raises(StorageError) as ei:
            await storage.preflight(timeout=5.0)
        await storage.close()
        took = time.monotonic() - t0
        msg = str(ei.value)
        assert took < 5.0, (msg, took)
        assert repr(conf.bucket) in msg and reason in msg, msg
        assert conf.secret not in msg and conf.secret not in repr(conf), msg

    with pytest.raises(StorageConfigError, match="bucket is required"):
        S3Storage(S3Config(access_key="a", secret="b"))
    with pytest.raises(StorageConfigError, match="storage.gcp: credentials_json is not a Google credentials file"):
        settings_from_yaml({"storage": {"gcp": {"bucket": "x", "credentials_json": "{}"}}})
    with pytest.raises(StorageConfigError, match="storage.s3.max_retry_delay"):
        settings_from_yaml({"storage": {"s3": {"bucket": "x", "max_retry_delay": "soon"}}})
    s = settings_from_yaml({"s3": {"bucket": "b", "access_key": "k", "secret": "s", "min_retry_delay": "250ms"},
                            "backup": {"prefix": "/tmp/lkm-backup"}, "storage": {"prefix": "p/"}})
    assert s.s3 is not None and s.s3.min_retry_delay == 0.25 and s.s3.max_retries == 5 and s.prefix == "p/"
    assert isinstance(s.backup, LocalStorage) and s.backup.directory == "/tmp/lkm-backup"


async def test_outage_mid_upload_is_bridged_by_retries(own_minio: MinioServer, tmp_path: Path) -> None:
    src = big_file(tmp_path / "big.bin", 12 * MIB)
    digest = sha(src)
    restarted = threading.Event()
    parts: list[int] = []

    def on_progress(key: str, done: int, total: int) -> None:
        parts.append(done)
        if len(parts) == 1:  # after the first part: take the server away for ~1 s
            own_minio.kill()
            threading.Thread(target=lambda: (time.sleep(1.0), own_minio.start(), restarted.set())).start()

    conf = own_minio.s3_config(BUCKET, part_size=5 * MIB, multipart_threshold=6 * MIB,
                               max_retries=10, min_retry_delay=0.2, max_retry_delay=1.0)
    backup = LocalStorage(tmp_path / "backup")
    async with Uploader(S3Storage(conf, on_progress=on_progress), backup=backup) as up:
        res = await up.upload_file(str(src), "big.bin")
    assert restarted.wait(30)
    assert res.stored and not res.backup_storage_used, res
    assert parts == [5 * MIB, 10 * MIB, 12 * MIB]
    assert src.exists(), "delete_after_upload was not asked for"
    own_minio.client().download_file(BUCKET, "big.bin", str(tmp_path / "back.bin"))
    assert sha(tmp_path / "back.bin") == digest


async def test_outage_uses_backup_then_keeps_the_file(own_minio: MinioServer, tmp_path: Path,
                                                      recording: Path, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, "lkmedia.storage")
    big = big_file(tmp_path / "big.bin", 12 * MIB)
    mp4 = copy_of(recording, tmp_path)
    digests = {big.name: sha(big), mp4.name: sha(mp4)}

    def on_progress(key: str, done: int, total: int) -> None:
        own_minio.kill()  # stopped after the first part and stays down

    conf = own_minio.s3_config(BUCKET, part_size=5 * MIB, multipart_threshold=6 * MIB,
                               max_retries=3, min_retry_delay=0.05, max_retry_delay=0.2)
    backup = LocalStorage(tmp_path / "backup", prefix="egress")
    t0 = time.monotonic()
    async with Uploader(S3Storage(conf, prefix="egress", on_progress=on_progress), backup=backup,
                        delete_after_upload=True) as up:
        res = await up.upload_file(str(big), "rec/big.bin")
        took = time.monotonic() - t0
        assert res.stored and res.backup_storage_used and up.backup_storage_used, res
        assert res.location == str(tmp_path / "backup" / "egress" / "rec" / "big.bin")
        assert sha(res.location) == digests["big.bin"]
        assert res.local_deleted and not big.exists(), "deleted after the backup copy was confirmed"
        assert "retry 3/3" in caplog.text and own_minio.secret not in caplog.text
        assert res.error and "'recordings'" in res.error
        assert took < 10, took

        # Later outputs of the same job go straight to the backup.
        t1 = time.monotonic()
        res2 = await up.upload_file(str(mp4), "rec/room_recording.mp4")
        assert res2.backup_storage_used and time.monotonic() - t1 < 1.0
        mres = await Manifest(egress_id="EG_b").upload(up, "rec/room_recording.mp4")
        assert mres.backup_storage_used and Path(mres.location).exists()

    # Backup broken as well (its directory is a file): the local file stays, and says where.
    mp4 = copy_of(recording, tmp_path, "kept.mp4")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    async with Uploader(S3Storage(conf), backup=LocalStorage(blocker), delete_after_upload=True) as up:
        res3 = await up.upload_file(str(mp4), "kept.mp4")
    assert not res3.stored and not res3.backup_storage_used
    assert mp4.exists() and sha(mp4) == digests["room_recording.mp4"]
    assert res3.local_path == str(mp4) and res3.location == str(mp4)
    assert res3.error and "backup:" in res3.error and f"kept at {mp4}" in res3.error
    assert own_minio.secret not in res3.error


async def test_local_file_deleted_only_after_confirmed_upload(own_minio: MinioServer, tmp_path: Path,
                                                              recording: Path) -> None:
    # The put succeeds, then the server dies before the upload can be confirmed: kept.
    mp4 = copy_of(recording, tmp_path)
    conf = own_minio.s3_config(BUCKET, max_retries=1, min_retry_delay=0.05, max_retry_delay=0.1)
    storage = S3Storage(conf, on_progress=lambda *a: own_minio.kill())
    async with Uploader(storage, delete_after_upload=True) as up:
        res = await up.upload_file(str(mp4), "unconfirmed.mp4")
    assert not res.stored and mp4.exists() and "stat of 'unconfirmed.mp4'" in (res.error or "")

    # Confirmed, but deletion not asked for: kept. Asked for: gone.
    own_minio.start()
    async with Uploader(S3Storage(own_minio.s3_config(BUCKET))) as up:
        keep = await up.upload_file(str(mp4), "a.mp4")
        assert keep.stored and mp4.exists() and not keep.local_deleted
        gone = await up.upload_file(str(mp4), "b.mp4", delete_local=True)
        assert gone.stored and gone.local_deleted and not mp4.exists()
    assert own_minio.client().head_object(Bucket=BUCKET, Key="b.mp4")["ContentLength"] == recording.stat().st_size


async def test_queue_is_bounded_and_drains(minio: MinioServer, tmp_path: Path) -> None:
    files = [big_file(tmp_path / f"f{i}.bin", 1000 + i) for i in range(6)]
    async with Uploader(S3Storage(minio.s3_config(BUCKET), prefix="q"), max_queue=2) as up:
        futs = [await up.submit(str(f)) for f in files]
        assert up._queue.qsize() <= 2
        await up.drain()
        results = [f.result() for f in futs]
    assert [r.key for r in results] == [f"q/f{i}.bin" for i in range(6)]
    assert all(r.stored and r.size == 1000 + i for i, r in enumerate(results))


def test_locations_follow_livekit() -> None:
    def loc(key: str, **kw: Any) -> str:
        return S3Storage(S3Config(bucket="mybucket", **kw)).location(key)

    assert loc("foo.mp4") == "https://mybucket.s3.amazonaws.com/foo.mp4"
    assert loc("a/b/c.mp4", endpoint="http://s3.example.com") == "https://mybucket.s3.example.com/a/b/c.mp4"
    assert loc("/foo.mp4", force_path_style=True) == "https://s3.amazonaws.com/mybucket/foo.mp4"
    assert loc("foo.mp4", endpoint="https://minio.example.com", force_path_style=True) == \
        "https://minio.example.com/mybucket/foo.mp4"
    assert loc("café/my file.mp4") == "https://mybucket.s3.amazonaws.com/caf%C3%A9/my%20file.mp4"
    assert LocalStorage("/var/storage/").location("/foo.mp4") == "/var/storage/foo.mp4"


async def test_presigned_url_reads_the_object(minio: MinioServer) -> None:
    """generate_presigned_url: the location is a signed GET URL that MinIO honours."""
    import urllib.error
    import urllib.request

    async with S3Storage(minio.s3_config(BUCKET), presign=True) as storage:
        obj = await storage.upload_bytes(b"signed", "signed/clip.mp4")
    assert obj.location.startswith(f"{minio.endpoint}/{BUCKET}/signed/clip.mp4?") and "X-Amz-Signature=" in obj.location
    assert minio.secret not in obj.location
    with urllib.request.urlopen(obj.location) as r:
        assert r.read() == b"signed"
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(obj.location.replace("X-Amz-Signature=", "X-Amz-Signature=00"))
    assert ei.value.code == 403
