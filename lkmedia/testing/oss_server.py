"""A small OSS endpoint for tests: no local Alibaba OSS server exists, so this one checks
the V4 signature of every request (``OSS4-HMAC-SHA256``, header or presigned query) with
the test credentials, as OSS documents it, and stores objects on disk (path-style
addressing, as the SDK uses for an IP endpoint). It implements what lkmedia uses: put,
head, get and delete of objects, and multipart uploads. A request signed with another
secret is refused with 403 SignatureDoesNotMatch; every request is logged with its verdict.

``OSSServer`` runs it as a child process (``python -m lkmedia.testing.oss_server``; the
secret goes by environment, never argv), so a test can stop it mid-upload.
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import secrets
import ssl
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit
from xml.etree import ElementTree

from .server import ServerProcess

_AUTH = re.compile(r"OSS4-HMAC-SHA256 Credential=([^/,]+)/(\d{8})/([^/,]+)/([^/,]+)/aliyun_v4_request"
                   r"(?:,AdditionalHeaders=([^,]*))?,Signature=([0-9a-f]{64})$")
_SKEW = timedelta(minutes=15)


def signing_key(secret: str, date: str, region: str, product: str) -> bytes:
    key = ("aliyun_v4" + secret).encode()
    for part in (date, region, product, "aliyun_v4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def canonical_request(method: str, raw_path: str, query_pairs: list[tuple[str, str]], headers: dict[str, str],
                      additional: list[str]) -> str:
    """OSS V4's canonical request from what arrived on the wire (query values as sent)."""
    uri = quote(unquote(raw_path), safe="/")
    query = "&".join(f"{k}={v}" if v else k for k, v in sorted(query_pairs))
    signed = sorted((k, v) for k, v in headers.items()
                    if k.startswith("x-oss-") or k in ("content-type", "content-md5") or k in additional)
    canon_headers = "".join(f"{k}:{v}\n" for k, v in signed)
    payload = headers.get("x-oss-content-sha256", "UNSIGNED-PAYLOAD")
    return f"{method}\n{uri}\n{query}\n{canon_headers}\n{';'.join(additional)}\n{payload}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _OSSHTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        return None

    # -- replies -------------------------------------------------------------------------
    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("x-oss-request-id", uuid.uuid4().hex[:24].upper())
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _fail(self, status: int, code: str, message: str) -> None:
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
                f"<RequestId>test</RequestId><HostId>127.0.0.1</HostId></Error>").encode()
        self.server.record(self.command, self.path, status, code)
        self._reply(status, body, {"Content-Type": "application/xml", "x-oss-err": code})

    # -- signature -----------------------------------------------------------------------
    def _verified(self) -> bool:
        """Check the V4 signature; replies 403 and returns False when it does not hold."""
        parts = urlsplit(self.path)
        pairs = [(k, v) for k, _, v in (p.partition("=") for p in parts.query.split("&") if p)]
        headers = {k.lower(): v for k, v in self.headers.items()}
        q = dict(pairs)
        now = datetime.now(UTC)
        if "x-oss-signature" in q:  # presigned URL
            cred = unquote(q.get("x-oss-credential", "")).split("/")
            given, stamp = q["x-oss-signature"], q.get("x-oss-date", "")
            additional = [h for h in unquote(q.get("x-oss-additional-headers", "")).split(";") if h]
            pairs = [(k, v) for k, v in pairs if k != "x-oss-signature"]
            try:
                expires = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC) + \
                    timedelta(seconds=int(q.get("x-oss-expires", "0")))
            except ValueError:
                self._fail(403, "AccessDenied", "bad x-oss-date")
                return False
            if now > expires:
                self._fail(403, "AccessDenied", "Request has expired.")
                return False
            if len(cred) != 5:
                self._fail(403, "AccessDenied", "bad x-oss-credential")
                return False
            ak, date, region, product = cred[:4]
        else:
            m = _AUTH.match(headers.get("authorization", ""))
            if m is None:
                self._fail(403, "AccessDenied", "no OSS4-HMAC-SHA256 Authorization header")
                return False
            ak, date, region, product, extra, given = m.groups()
            additional = [h for h in (extra or "").split(";") if h]
            stamp = headers.get("x-oss-date", "")
            try:
                when = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            except ValueError:
                self._fail(403, "AccessDenied", "missing x-oss-date")
                return False
            if abs(now - when) > _SKEW:
                self._fail(403, "RequestTimeTooSkewed", "The difference between the request time and the "
                                                        "server's time is too large.")
                return False
        if ak != self.server.access_key:
            self._fail(403, "InvalidAccessKeyId", "The OSS Access Key Id you provided does not exist in our records.")
            return False
        if region != self.server.region or product != "oss":
            self._fail(403, "SignatureDoesNotMatch", f"scope {region}/{product} is not {self.server.region}/oss")
            return False
        canon = canonical_request(self.command, parts.path, pairs, headers, additional)
        to_sign = "\n".join(["OSS4-HMAC-SHA256", stamp, f"{date}/{region}/{product}/aliyun_v4_request",
                             hashlib.sha256(canon.encode()).hexdigest()])
        want = hmac.new(signing_key(self.server.secret, date, region, product), to_sign.encode(),
                        hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, given):
            self._fail(403, "SignatureDoesNotMatch", "The request signature we calculated does not match the "
                                                     "signature you provided.")
            return False
        return True

    # -- routing -------------------------------------------------------------------------
    def _target(self) -> tuple[str, str, dict[str, str]]:
        parts = urlsplit(self.path)
        path = unquote(parts.path).lstrip("/")
        bucket, _, key = path.partition("/")
        query = {k: unquote(v) for k, _, v in (p.partition("=") for p in parts.query.split("&") if p)}
        return bucket, key, query

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():  # the SDK streams bodies
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers, then the empty line
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _handle(self) -> None:
        body = self._body() if self.command in ("PUT", "POST") else b""
        if not self._verified():
            return
        bucket, key, query = self._target()
        store = self.server.root
        if not bucket or not (store / bucket).is_dir():
            self._fail(404, "NoSuchBucket", "The specified bucket does not exist.")
            return
        if not key or ".." in key.split("/"):
            self._fail(400, "InvalidObjectName", "an object key is needed")
            return
        self.server.record(self.command, self.path, 200, "")
        if "uploads" in query or "uploadId" in query:
            self._multipart(bucket, key, query, body)
        else:
            self._object(store / bucket / key, body)

    def _multipart(self, bucket: str, key: str, query: dict[str, str], body: bytes) -> None:
        d = self.server.uploads / query.get("uploadId", uuid.uuid4().hex)
        if self.command == "POST" and "uploads" in query:
            d.mkdir(parents=True)
            (d / "content-type").write_text(self.headers.get("Content-Type", ""))
            xml = (f"<InitiateMultipartUploadResult><Bucket>{bucket}</Bucket><Key>{quote(key)}</Key>"
                   f"<UploadId>{d.name}</UploadId></InitiateMultipartUploadResult>")
            self._reply(200, xml.encode(), {"Content-Type": "application/xml"})
        elif not d.is_dir():
            self._fail(404, "NoSuchUpload", "The specified upload does not exist.")
        elif self.command == "PUT":
            (d / f"{int(query['partNumber']):05d}").write_bytes(body)
            self._reply(200, b"", {"ETag": f'"{hashlib.md5(body).hexdigest().upper()}"'})
        elif self.command == "POST":
            numbers = [int(e.text or 0) for e in ElementTree.fromstring(body).iter("PartNumber")]
            if any(not (d / f"{n:05d}").exists() for n in numbers):
                self._fail(400, "InvalidPart", "One or more of the specified parts could not be found.")
                return
            self._store(self.server.root / bucket / key, b"".join((d / f"{n:05d}").read_bytes() for n in numbers),
                        (d / "content-type").read_text())
            xml = f"<CompleteMultipartUploadResult><Bucket>{bucket}</Bucket><Key>{quote(key)}</Key>" \
                  f"<ETag>\"{uuid.uuid4().hex.upper()}\"</ETag></CompleteMultipartUploadResult>"
            self._reply(200, xml.encode(), {"Content-Type": "application/xml"})
        elif self.command == "DELETE":
            for p in sorted(d.glob("*")):
                p.unlink()
            self._reply(204)
        else:
            self._fail(405, "MethodNotAllowed", "not supported by this test endpoint")

    def _object(self, obj: Path, body: bytes) -> None:
        if self.command == "PUT":
            self._store(obj, body, self.headers.get("Content-Type", ""))
            self._reply(200, b"", {"ETag": f'"{hashlib.md5(body).hexdigest().upper()}"'})
        elif self.command == "DELETE":
            obj.unlink(missing_ok=True)
            self._reply(204)
        elif self.command not in ("GET", "HEAD"):
            self._fail(405, "MethodNotAllowed", "not supported by this test endpoint")
        elif not obj.is_file():
            self._fail(404, "NoSuchKey", "The specified key does not exist.")
        else:
            data = obj.read_bytes()
            headers = {"Content-Type": self.server.meta(obj).get("content_type") or "application/octet-stream",
                       "ETag": f'"{hashlib.md5(data).hexdigest().upper()}"'}
            if self.command == "GET":
                self._reply(200, data, headers)
                return
            self.send_response(200)  # HEAD: the object's length, no body
            for k, v in {**headers, "Content-Length": str(len(data))}.items():
                self.send_header(k, v)
            self.end_headers()

    def _store(self, obj: Path, data: bytes, content_type: str) -> None:
        obj.parent.mkdir(parents=True, exist_ok=True)
        tmp = obj.with_name(f".{obj.name}.{uuid.uuid4().hex[:6]}")
        tmp.write_bytes(data)
        os.replace(tmp, obj)
        self.server.set_meta(obj, {"content_type": content_type})

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


class _OSSHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, root: Path, access_key: str, secret: str, region: str) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.root, self.access_key, self.secret, self.region = root / "buckets", access_key, secret, region
        self.uploads = root / "uploads"
        self.meta_dir = root / "meta"
        self.log_path = root / "requests.log"
        self._lock = threading.Lock()
        for d in (self.root, self.uploads, self.meta_dir):
            d.mkdir(parents=True, exist_ok=True)

    def record(self, method: str, path: str, status: int, code: str) -> None:
        with self._lock, open(self.log_path, "a") as f:
            f.write(json.dumps({"method": method, "path": urlsplit(path).path, "status": status, "code": code}) + "\n")

    def _meta_path(self, obj: Path) -> Path:
        return self.meta_dir / (hashlib.sha256(str(obj).encode()).hexdigest() + ".json")

    def set_meta(self, obj: Path, meta: dict[str, str]) -> None:
        self._meta_path(obj).write_text(json.dumps(meta))

    def meta(self, obj: Path) -> dict[str, str]:
        p = self._meta_path(obj)
        return dict(json.loads(p.read_text())) if p.exists() else {}


class OSSServer(ServerProcess):
    """``start()``; ``endpoint``, ``access_key``, ``secret``, ``region``; ``create_bucket``,
    ``objects``, ``download``, ``requests()`` (method, path, status, code of each request);
    ``oss_config(bucket)``."""

    name = "oss"

    def __init__(self, root: str | os.PathLike[str] | None = None, port: int | None = None,
                 region: str = "cn-hangzhou", tls: tuple[str, str] | None = None) -> None:
        super().__init__(root, port, tls)
        self.access_key = "LTAI" + secrets.token_hex(8)
        self.secret = "oss-" + secrets.token_urlsafe(20)
        self.region = region

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "lkmedia.testing.oss_server", "--port", str(self.port), "--root",
                str(self.data_dir), "--access-key", self.access_key, "--region", self.region,
                *(["--cert", self.tls[0], "--key", self.tls[1]] if self.tls else [])]

    def environment(self) -> dict[str, str]:
        return {**os.environ, "LKMEDIA_OSS_TEST_SECRET": self.secret}

    def create_bucket(self, name: str) -> str:
        (self.data_dir / "buckets" / name).mkdir(parents=True, exist_ok=True)
        return name

    def objects(self, bucket: str) -> dict[str, int]:
        base = self.data_dir / "buckets" / bucket
        return {str(p.relative_to(base)): p.stat().st_size for p in base.rglob("*")
                if p.is_file() and not p.name.startswith(".")}

    def download(self, bucket: str, name: str) -> bytes:
        return (self.data_dir / "buckets" / bucket / name).read_bytes()

    def content_type(self, bucket: str, name: str) -> str:
        obj = self.data_dir / "buckets" / bucket / name
        p = self.data_dir / "meta" / (hashlib.sha256(str(obj).encode()).hexdigest() + ".json")
        return str(json.loads(p.read_text()).get("content_type", "")) if p.exists() else ""

    def requests(self) -> list[dict[str, Any]]:
        p = self.data_dir / "requests.log"
        return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []

    def oss_config(self, bucket: str, **overrides: Any) -> Any:
        from ..storage.cloud_config import AliOSSConfig

        args: dict[str, Any] = {"bucket": bucket, "access_key": self.access_key, "secret": self.secret,
                                "region": self.region, "endpoint": self.endpoint}
        args.update(overrides)
        return AliOSSConfig(**args)


def main() -> None:
    p = argparse.ArgumentParser(description="a signature-checking OSS endpoint for tests")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--access-key", required=True)
    p.add_argument("--region", default="cn-hangzhou")
    p.add_argument("--cert", help="PEM certificate: serve HTTPS")
    p.add_argument("--key", help="its PEM key")
    a = p.parse_args()
    secret = os.environ.get("LKMEDIA_OSS_TEST_SECRET", "")
    if not secret:
        sys.exit("LKMEDIA_OSS_TEST_SECRET is not set")
    srv = _OSSHTTPServer(a.port, Path(a.root), a.access_key, secret, a.region)
    if a.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.cert, a.key)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
