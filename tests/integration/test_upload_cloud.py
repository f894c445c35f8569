"""Uploads to Google Cloud Storage (fake-gcs-server), Azure Blob (Azurite) and Alibaba OSS
(a local endpoint that checks the SDK's V4 signatures), through the same Storage contract
as S3: what lands is listed and read back, large files go in parts, a bad bucket or
credential fails preflight within seconds without leaking the secret, signed URLs read
the object, and a server taken away mid-upload loses nothing (retries, then the backup)."""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import pytest

from lkmedia.storage import LocalStorage, Manifest, StorageConfigError, StorageError, Uploader, make_storage
from lkmedia.testing.cloud import PROVIDERS, CloudTarget, missing
from lkmedia.testing.rtmp_server import free_port

pytestmark = pytest.mark.integration
BUCKET = "recordings"
MIB = 1 << 20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def start_target(provider: str, root: Path) -> CloudTarget:
    why = missing(provider)
    if why:
        pytest.fail(why)
    target = CloudTarget(provider, root).start()
    target.create(BUCKET)
    return target


@pytest.fixture(scope="module", params=PROVIDERS)
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudTarget]:
    t = start_target(request.param, tmp_path_factory.mktemp(request.param))
    try:
        yield t
    finally:
        t.cleanup()


@pytest.fixture(params=PROVIDERS)
def own_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CloudTarget]:
    """A server of this test's own, which it may kill."""
    t = start_target(request.param, tmp_path / request.param)
    try:
        yield t
    finally:
        t.cleanup()


def storage(t: CloudTarget, bucket: str = BUCKET, *, prefix: str = "", on_progress: Any = None,
            presign: bool = False, **overrides: Any) -> Any:
    s = make_storage(t.provider, t.config(bucket, **overrides), prefix=prefix, presign=presign)
    s.on_progress = on_progress
    return s


async def test_files_and_parts_land_whole_and_the_manifest_lists_them(target: CloudTarget, tmp_path: Path) -> None:
    small = tmp_path / "clip.mp4"
    small.write_bytes(os.urandom(300_000))
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 * MIB))
    digests = {p.name: sha(p.read_bytes()) for p in (small, big)}
    parts: list[int] = []
    s = storage(target, prefix="egress", on_progress=lambda k, done, total: parts.append(done),
                part_size=5 * MIB, multipart_threshold=6 * MIB)
    t0 = time.monotonic()
    async with Uploader(s, delete_after_upload=True) as up:
        await up.preflight(timeout=5.0)
        res = await up.upload_file(str(small), "2026/clip.mp4")
        parts.clear()
        res_big = await up.upload_file(str(big), "2026/big.bin")
        big_parts = list(parts)
        manifest = Manifest(egress_id="EG_cloud", room_name="demo")
        manifest.add_file(res.filename, res.location)
        mres = await manifest.upload(up, "2026/clip.mp4")
    took = time.monotonic() - t0
    assert res.stored and not res.backup_storage_used and res.error is None, res
    assert res.key == "egress/2026/clip.mp4" and res.location == target.location(BUCKET, res.key)
    assert res.local_deleted and not small.exists() and not big.exists()
    assert big_parts == [5 * MIB, 10 * MIB, 12 * MIB], "large files go in parts"
    assert res_big.stored and res_big.size == 12 * MIB

    listed = target.objects(BUCKET)
    assert listed["egress/2026/clip.mp4"] == 300_000 and listed["egress/2026/big.bin"] == 12 * MIB
    assert not [k for k in listed if "preflight" in k], "the preflight probe was removed"
    assert sha(target.download(BUCKET, "egress/2026/clip.mp4")) == digests["clip.mp4"]
    assert sha(target.download(BUCKET, "egress/2026/big.bin")) == digests["big.bin"]
    assert mres.stored and mres.key == "egress/2026/EG_cloud.json"
    m = json.loads(target.download(BUCKET, mres.key))
    assert m["files"] == [{"filename": "2026/clip.mp4", "location": res.location}]
    print(f"{target.provider}: 300 kB + 12 MiB in parts + manifest in {took:.2f} s")


async def test_content_type_is_set(target: CloudTarget, tmp_path: Path) -> None:
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(7 * MIB))
    s = storage(target, part_size=5 * MIB, multipart_threshold=6 * MIB)
    async with s:
        await s.upload_bytes(b"#EXTM3U\n", "ct/index.m3u8")
        await s.upload_file(str(big), "ct/big.mp4")  # in parts

    def content_type(key: str) -> str:
        if target.provider == "azure":
            props = target.server.client().get_blob_client(BUCKET, key).get_blob_properties()
            return str(props.content_settings.content_type)
        if target.provider == "gcp":
            return str(target.server.metadata(BUCKET, key)["contentType"])
        return str(target.server.content_type(BUCKET, key))

    assert content_type("ct/index.m3u8") == "application/x-mpegurl"
    assert content_type("ct/big.mp4") == "video/mp4"


async def test_bad_bucket_or_credential_fails_preflight_fast(target: CloudTarget) -> None:
    cases: list[tuple[dict[str, Any], str, str]] = [({"bucket": "no-such-bucket"}, "no-such-bucket", "does not exist")]
    if target.provider == "azure":
        cases = [({"container_name": "no-such-container"}, "no-such-container", "does not exist"),
                 ({"account_key": target.wrong_secret()}, BUCKET, "authorization failed")]
    elif target.provider == "alioss":
        cases.append(({"secret": target.wrong_secret()}, BUCKET, "the secret does not match"))
    timings = []
    for overrides, named, reason in cases:
        t0 = time.monotonic()
        s = storage(target, **overrides)
        with pytest.raises(StorageError) as ei:
            await s.preflight(timeout=5.0)
        await s.close()
        took = time.monotonic() - t0
        timings.append(took)
        msg = str(ei.value)
        assert took < 5.0 and repr(named) in msg and reason in msg, (msg, took)
        for secret in (target.secret, overrides.get("secret", "x" * 9), overrides.get("account_key", "x" * 9)):
            assert secret not in msg
    if target.provider == "gcp":
        # fake-gcs-server takes any credentials: a malformed key is refused by lkmedia itself
        for creds, reason in (("{not json", "not valid JSON"),
                              ('{"type": "service_account", "client_email": "x@y"}', "without private_key")):
            with pytest.raises(StorageConfigError, match=reason):
                storage(target, credentials_json=creds)
    print(f"{target.provider}: preflight refused in " + ", ".join(f"{t * 1000:.0f} ms" for t in timings))


async def test_signed_urls_read_the_object(target: CloudTarget) -> None:
    s = storage(target, presign=True)
    async with s:
        obj = await s.upload_bytes(b"signed bytes", "signed/my clip.mp4")
    url = obj.location
    query = dict(parse_qsl(urlsplit(url).query))
    if target.provider == "gcp":
        assert url.startswith(f"https://storage.googleapis.com/{BUCKET}/signed/my%20clip.mp4?")
        assert query["X-Goog-Algorithm"] == "GOOG4-RSA-SHA256" and int(query["X-Goog-Expires"]) == 7 * 24 * 3600
        assert_gcs_signature(url, target.creds["private_key"])
        # fake-gcs-server serves the path (it checks no signature)
        local = target.server.endpoint + urlsplit(url).path
        assert urllib.request.urlopen(local).read() == b"signed bytes"
        return
    assert url.split("?", 1)[0] == target.location(BUCKET, "signed/my%20clip.mp4")
    assert urllib.request.urlopen(url).read() == b"signed bytes"  # the server checks the signature
    sig = "sig" if target.provider == "azure" else "x-oss-signature"
    base, _, value = url.rpartition(f"&{sig}=")  # the signature is the last parameter
    assert value and unquote(value) == query[sig]
    forged = f"{base}&{sig}=" + quote(base64.b64encode(os.urandom(32)).decode() if sig == "sig" else "0" * 64)
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(forged)
    assert ei.value.code == 403


def assert_gcs_signature(url: str, private_key: str) -> None:
    """Check a V4 signed URL against the public half of the key that signed it."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    parts = urlsplit(url)
    q = dict(parse_qsl(parts.query))
    sig = bytes.fromhex(q.pop("X-Goog-Signature"))
    canon_q = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in sorted(q.items()))
    canonical = "\n".join(["GET", parts.path, canon_q, f"host:{parts.netloc}\n", "host", "UNSIGNED-PAYLOAD"])
    scope = q["X-Goog-Credential"].split("/", 1)[1]
    to_sign = "\n".join(["GOOG4-RSA-SHA256", q["X-Goog-Date"], scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key: Any = serialization.load_pem_private_key(private_key.encode(), None)
    key.public_key().verify(sig, to_sign.encode(), padding.PKCS1v15(), hashes.SHA256())


async def test_outage_mid_upload_is_bridged_by_retries(own_target: CloudTarget, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(12 * MIB))
    digest = sha(src.read_bytes())
    restarted = threading.Event()
    parts: list[int] = []

    def on_progress(key: str, done: int, total: int) -> None:
        parts.append(done)
        if len(parts) == 1:  # after the first part: take the server away for ~1 s
            own_target.take_down()
            threading.Thread(target=lambda: (time.sleep(1.0), own_target.process.start(), restarted.set())).start()

    s = storage(own_target, on_progress=on_progress, part_size=5 * MIB, multipart_threshold=6 * MIB,
                max_retries=10, min_retry_delay=0.2, max_retry_delay=1.0)
    t0 = time.monotonic()
    async with Uploader(s, backup=LocalStorage(tmp_path / "backup")) as up:
        res = await up.upload_file(str(src), "big.bin")
    took = time.monotonic() - t0
    assert restarted.wait(30)
    assert res.stored and not res.backup_storage_used, res
    # fake-gcs-server forgets resumable sessions when it restarts: lkmedia starts again
    again = [5 * MIB] if own_target.provider == "gcp" else []
    assert parts == [5 * MIB, *again, 10 * MIB, 12 * MIB]
    assert sha(own_target.download(BUCKET, "big.bin")) == digest
    print(f"{own_target.provider}: 12 MiB across a 1 s outage in {took:.2f} s")


async def test_outage_uses_backup_and_deletes_only_confirmed_copies(own_target: CloudTarget, tmp_path: Path,
                                                                    caplog: Any) -> None:
    caplog.set_level(logging.WARNING, "lkmedia.storage")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 * MIB))
    digest = sha(big.read_bytes())

    def on_progress(key: str, done: int, total: int) -> None:
        own_target.take_down()  # after the first part, and it stays down

    s = storage(own_target, prefix="egress", on_progress=on_progress, part_size=5 * MIB, multipart_threshold=6 * MIB,
                max_retries=3, min_retry_delay=0.05, max_retry_delay=0.2)
    backup = LocalStorage(tmp_path / "backup", prefix="egress")
    t0 = time.monotonic()
    async with Uploader(s, backup=backup, delete_after_upload=True) as up:
        res = await up.upload_file(str(big), "rec/big.bin")
        took = time.monotonic() - t0
        assert res.stored and res.backup_storage_used and up.backup_storage_used, res
        assert res.location == str(tmp_path / "backup" / "egress" / "rec" / "big.bin")
        assert sha(Path(res.location).read_bytes()) == digest
        assert res.local_deleted and not big.exists(), "deleted once the backup copy was confirmed"
        assert "retry 3/3" in caplog.text and own_target.secret not in caplog.text
        assert res.error and repr(BUCKET) in res.error
        assert took < 10, took
    # Backup broken as well: the local file stays and says where.
    kept = tmp_path / "kept.mp4"
    kept.write_bytes(b"x" * 1000)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    async with Uploader(storage(own_target, max_retries=1, min_retry_delay=0.05, max_retry_delay=0.1),
                        backup=LocalStorage(blocker), delete_after_upload=True) as up:
        res2 = await up.upload_file(str(kept), "kept.mp4")
    assert not res2.stored and kept.exists() and f"kept at {kept}" in (res2.error or "")
    assert own_target.secret not in (res2.error or "")
    print(f"{own_target.provider}: down -> backup in {took:.2f} s")


def test_oss_endpoint_refuses_requests_it_cannot_verify(tmp_path: Path) -> None:
    """The OSS endpoint itself: unsigned, wrongly signed and stale requests are refused."""
    t = start_target("alioss", tmp_path / "oss")
    try:
        url = f"{t.server.endpoint}/{BUCKET}/x.bin"
        for headers in ({}, {"Authorization": "OSS4-HMAC-SHA256 Credential=" + t.server.access_key +
                         "/20260101/cn-hangzhou/oss/aliyun_v4_request,Signature=" + "0" * 64,
                         "x-oss-date": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())}):
            req = urllib.request.Request(url, data=b"x", method="PUT", headers=headers)
            with pytest.raises(urllib.error.HTTPError) as ei:
                urllib.request.urlopen(req)
            assert ei.value.code == 403
        assert [r["code"] for r in t.server.requests()] == ["AccessDenied", "SignatureDoesNotMatch"]
        assert not t.objects(BUCKET)
    finally:
        t.cleanup()


async def test_proxy_variables_are_honoured(target: CloudTarget, monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTPS_PROXY / HTTP_PROXY and NO_PROXY, as the providers' SDKs read them (GCS also
    takes the Go egress's proxy_config). A proxy that is not there fails the preflight;
    NO_PROXY naming the server lets it through."""
    dead = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", dead)
    monkeypatch.setenv("HTTPS_PROXY", dead)
    s = storage(target)
    with pytest.raises(StorageError, match="failed for"):
        await s.preflight(timeout=5.0)
    await s.close()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    async with storage(target) as s:
        await s.preflight(timeout=5.0)
    if target.provider == "gcp":
        monkeypatch.delenv("HTTP_PROXY")
        monkeypatch.delenv("HTTPS_PROXY")
        monkeypatch.delenv("NO_PROXY")
        s = storage(target, proxy_url=dead)
        with pytest.raises(StorageError, match="cannot reach"):
            await s.preflight(timeout=5.0)
        await s.close()


async def test_a_cloud_provider_as_the_backup(tmp_path: Path) -> None:
    """``backup: {azure: ...}`` under a primary OSS that is down: the file lands in Azurite,
    confirmed, and only then is the local copy deleted."""
    primary = start_target("alioss", tmp_path / "oss")
    backup = start_target("azure", tmp_path / "azure")
    try:
        from lkmedia.storage import settings_from_yaml

        settings = settings_from_yaml({"storage": {"alioss": {**primary.yaml(BUCKET), "max_retries": 1,
                                                              "max_retry_delay": "100ms"}},
                                       "backup": {"prefix": "saved", "azure": backup.yaml(BUCKET)}})
        assert settings.backup is not None and settings.backup.kind == "azure"
        primary.take_down()
        mp4 = tmp_path / "rec.mp4"
        mp4.write_bytes(os.urandom(200_000))
        digest = sha(mp4.read_bytes())
        async with Uploader(settings.default_storage(), backup=settings.backup, delete_after_upload=True) as up:
            res = await up.upload_file(str(mp4), "rec.mp4")
        assert res.stored and res.backup_storage_used and res.local_deleted and not mp4.exists(), res
        assert res.location == backup.location(BUCKET, "saved/rec.mp4")
        assert sha(backup.download(BUCKET, "saved/rec.mp4")) == digest
        assert primary.secret not in (res.error or "") and "OSS bucket" in (res.error or "")
    finally:
        primary.cleanup()
        backup.cleanup()
