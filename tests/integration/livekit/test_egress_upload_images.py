"""Image outputs upload each JPEG as it is written, through the real API: livekit-api ->
livekit-server -> Redis -> lkmedia EgressService -> a JPEG a second -> S3 (MinIO), GCS
(fake-gcs-server), Azure Blob (Azurite) and OSS (the signature-checking endpoint).

While the egress is ACTIVE the JPEGs are already listed by the server (polled every
50 ms; the delay from a file written locally to its key listed is printed); at the end
every image the result counts is stored and the job directory is empty, each JPEG
deleted only once stored. With the server stopped mid-egress the backup takes the
JPEGs, while it records, and none is lost. The provider's secret never reaches
EgressInfo or the logs.
"""
from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from livekit import api
from livekit.protocol import egress as lk

from lkmedia.dev.stack import DevStack
from lkmedia.probe import probe
from lkmedia.service.egress import EgressService
from lkmedia.testing.cloud import CloudTarget
from lkmedia.testing.egress import TERMINAL, egress_service, wait_egress
from lkmedia.testing.s3_server import MinioServer
from lkmedia.testing.uploads import LocalWatcher, ObjectPoller, delays

from . import test_egress_upload as s3_tests
from . import test_egress_upload_cloud as cloud_tests
from .test_egress_upload import BUCKET, head_size, keys
from .test_egress_upload import assert_no_secret as assert_no_s3_secret
from .test_egress_upload_cloud import assert_no_secret, storage_yaml

S = lk.EgressStatus
# the S3 and cloud upload tests' fixtures: MinIO with the service, each cloud provider's server
minio, service, target = s3_tests.minio, s3_tests.service, cloud_tests.target


@dataclass
class Run:
    """One egress with a JPEG a second beside an MP4, watched locally and in the storage."""

    info: lk.EgressInfo
    job_dir: Path
    watcher: LocalWatcher
    poller: ObjectPoller
    prefix: str
    done: lk.EgressInfo | None = None
    live: dict[str, bool] = field(default_factory=dict)  # checks made while it was ACTIVE

    def jpegs(self, names: Iterable[str]) -> set[str]:
        return {n for n in names if n.startswith(f"{self.prefix}/img/") and n.endswith(".jpeg")}

    def expected(self) -> set[str]:
        assert self.done is not None
        (img,) = self.done.image_results
        return {f"{self.prefix}/img/shot_{i:05d}.jpeg" for i in range(img.image_count)}

    def left(self) -> list[str]:
        return [str(x) for x in self.job_dir.rglob("*") if x.is_file()] if self.job_dir.exists() else []


async def start(lkapi: api.LiveKitAPI, room_name: str, tmp_dir: str, prefix: str,
                list_keys: Callable[[], Iterable[str]], stored_size: Callable[[str], int | None]) -> Run:
    info = await lkapi.egress.start_participant_egress(lk.ParticipantEgressRequest(
        room_name=room_name, identity="pub",
        file_outputs=[lk.EncodedFileOutput(filepath=f"{prefix}/{{room_name}}.mp4")],
        image_outputs=[lk.ImageOutput(capture_interval=1, width=320, height=180, filename_prefix=f"{prefix}/img/shot")]))
    run = Run(info, Path(tmp_dir) / info.egress_id, LocalWatcher(Path(tmp_dir) / info.egress_id, stored_size),
              ObjectPoller(list_keys), prefix)
    await wait_egress(lkapi, info.egress_id, {S.EGRESS_ACTIVE})
    return run


async def status(lkapi: api.LiveKitAPI, egress_id: str) -> int:
    res = await lkapi.egress.list_egress(lk.ListEgressRequest(egress_id=egress_id))
    return int(res.items[0].status)


async def until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def record(lkapi: api.LiveKitAPI, run: Run, *, outage: Callable[[], None] | None = None,
                 backup_dir: Path | None = None) -> Run:
    """Until 3 JPEGs are listed (or, with ``outage``: the server stopped, until 2 JPEGs are
    in ``backup_dir``), checking the egress is still ACTIVE then; StopEgress; its end.
    Nothing asks the server while it is down (a test client's own retries would wait
    minutes)."""
    watch = asyncio.create_task(asyncio.to_thread(run.watcher.run))
    poll = asyncio.create_task(asyncio.to_thread(run.poller.run))
    try:
        run.live["listed"] = await until(lambda: len(run.jpegs(run.poller.listed)) >= 3, 10)
        run.live["active_when_listed"] = await status(lkapi, run.info.egress_id) == S.EGRESS_ACTIVE
        if outage is not None:
            assert backup_dir is not None
            run.poller.stop()
            await poll
            await asyncio.to_thread(outage)  # and it stays down
            run.live["in_backup"] = await until(
                lambda: len(run.jpegs(str(p.relative_to(backup_dir)) for p in backup_dir.rglob("*.jpeg"))) >= 2, 20)
            run.live["active_in_backup"] = await status(lkapi, run.info.egress_id) == S.EGRESS_ACTIVE
        await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=run.info.egress_id))
        run.done = await wait_egress(lkapi, run.info.egress_id, TERMINAL, timeout=45)
    finally:
        run.watcher.stop()
        run.poller.stop()
        await asyncio.gather(watch, poll)
    return run


def check_live(run: Run, stored: dict[str, int], what: str) -> str:
    """Every JPEG the result counts is stored, none left locally, each deleted only once
    stored at full size; JPEGs were listed while ACTIVE. Returns the delays, for print."""
    assert run.done is not None and run.done.status == S.EGRESS_COMPLETE, run.done
    assert run.live == {"listed": True, "active_when_listed": True}, run.live
    expected = run.expected()
    assert len(expected) >= 3 and run.jpegs(stored) == expected, (sorted(expected), sorted(stored))
    assert all(stored[k] > 0 for k in expected)
    assert not run.left(), run.left()
    for k in expected & run.watcher.vanished.keys():
        local_size, obj_size = run.watcher.vanished[k]
        assert obj_size is not None and obj_size >= local_size, (k, local_size, obj_size)
    # a JPEG stored within one 10 ms scan of the watcher is never seen locally: no delay for it
    d = delays(run.watcher.appeared, {k: t for k, t in run.poller.listed.items() if k in expected})
    assert max(d, default=0.0) < 2.0, d
    return (f"{what}: {len(expected)} JPEGs; written -> listed (50 ms polling) median "
            f"{statistics.median(d or [0.0]):.2f} s, max {max(d, default=0.0):.2f} s over {len(d)}")


def no_size(key: str) -> int | None:
    """The watcher's lookup when the server will go down: local sizes only."""
    return None


def check_outage(run: Run, in_bucket: set[str], backup_dir: Path) -> str:
    assert run.done is not None and run.done.status == S.EGRESS_COMPLETE, run.done
    assert run.done.backup_storage_used
    assert run.live == {"listed": True, "active_when_listed": True, "in_backup": True,
                        "active_in_backup": True}, run.live
    in_backup = run.jpegs(str(p.relative_to(backup_dir)) for p in backup_dir.rglob("*.jpeg"))
    expected = run.expected()
    # every JPEG is somewhere: in the bucket (before the stop) or in the backup
    assert (in_bucket & expected) | in_backup == expected and in_backup, (sorted(expected), in_bucket, in_backup)
    for k in in_backup:
        if run.watcher.vanished.get(k, (0, None))[0] > 0:  # seen locally at its size
            assert (backup_dir / k).stat().st_size == run.watcher.vanished[k][0], k
    assert not run.left(), run.left()
    (f,) = run.done.file_results
    assert f.location.startswith(str(backup_dir))
    return f"{len(expected)} JPEGs: {len(in_bucket & expected)} in the bucket, {len(in_backup)} in the backup"


async def test_s3_images_are_listed_while_the_egress_records(
    livekit_stack: DevStack, service: EgressService, publisher: object, room_name: str, minio: MinioServer,
    backup_dir: Path, tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    async with livekit_stack.api() as lkapi:
        run = await start(lkapi, room_name, service.tmp_dir, "live", lambda: keys(minio, BUCKET),
                          head_size(minio, BUCKET))
        await record(lkapi, run)
    stored = keys(minio, BUCKET)
    summary = check_live(run, stored, "S3")
    jpeg = tmp_path / "shot.jpeg"
    minio.client().download_file(BUCKET, "live/img/shot_00000.jpeg", str(jpeg))
    p = probe(str(jpeg))
    assert p.stream("video").codec == "mjpeg" and (p.stream("video").width, p.stream("video").height) == (320, 180)
    assert not any(backup_dir.rglob("*.*"))
    assert run.done is not None
    assert_no_s3_secret(minio.secret, run.done, logs.text)
    print(summary)


async def test_s3_stopped_mid_egress_images_go_to_the_backup(
    livekit_stack: DevStack, service: EgressService, publisher: object, room_name: str, minio: MinioServer,
    backup_dir: Path, logs: pytest.LogCaptureFixture
) -> None:
    async with livekit_stack.api() as lkapi:
        run = await start(lkapi, room_name, service.tmp_dir, "lost", lambda: keys(minio, BUCKET), no_size)
        await record(lkapi, run, outage=minio.stop, backup_dir=backup_dir)
    minio.start()
    summary = check_outage(run, set(keys(minio, BUCKET)), backup_dir)
    assert run.done is not None
    assert_no_s3_secret(minio.secret, run.done, logs.text)
    print(f"S3 down: {summary}")


async def test_cloud_images_are_listed_while_the_egress_records(
    livekit_stack: DevStack, target: CloudTarget, publisher: object, room_name: str, backup_dir: Path,
    tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    async with egress_service(livekit_stack, tmp_path, storage_yaml(target, backup_dir)) as svc, \
            livekit_stack.api() as lkapi:
        run = await start(lkapi, room_name, svc.tmp_dir, "live", lambda: target.objects(BUCKET),
                          lambda key: target.size(BUCKET, key))
        await record(lkapi, run)
    summary = check_live(run, target.objects(BUCKET), target.provider)
    jpeg = tmp_path / "shot.jpeg"
    target.download(BUCKET, "live/img/shot_00000.jpeg", jpeg)
    assert probe(str(jpeg)).stream("video").codec == "mjpeg"
    assert not any(backup_dir.rglob("*.*"))
    assert run.done is not None
    assert_no_secret(target, run.done, logs.text)
    print(summary)


async def test_cloud_server_stopped_mid_egress_images_go_to_the_backup(
    livekit_stack: DevStack, target: CloudTarget, publisher: object, room_name: str, backup_dir: Path,
    tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    async with egress_service(livekit_stack, tmp_path, storage_yaml(target, backup_dir)) as svc, \
            livekit_stack.api() as lkapi:
        run = await start(lkapi, room_name, svc.tmp_dir, "lost", lambda: target.objects(BUCKET), no_size)
        await record(lkapi, run, outage=target.process.stop, backup_dir=backup_dir)
    target.process.start()
    summary = check_outage(run, set(target.objects(BUCKET)), backup_dir)
    assert run.done is not None
    assert_no_secret(target, run.done, logs.text)
    print(f"{target.provider} down: {summary}")
