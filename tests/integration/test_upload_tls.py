"""A private CA through SSL_CERT_FILE, as the providers' SDKs honour it: Azurite,
fake-gcs-server and the OSS endpoint serve HTTPS with a certificate of the test's own,
and an lkmedia process (the variable is read when the HTTP library loads) uploads to each
only when SSL_CERT_FILE names it. GCS here is not an emulator: lkmedia gets a bearer
token from the service account's token_uri (a local HTTPS endpoint that checks the signed
assertion), as it does from Google."""
from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lkmedia.testing.azurite import AzuriteServer
from lkmedia.testing.cloud import PROVIDERS, missing, service_account
from lkmedia.testing.gcs_server import FakeGCSServer
from lkmedia.testing.oss_server import OSSServer
from lkmedia.testing.rtmp_server import free_port

pytestmark = pytest.mark.integration
BUCKET = "recordings"

# The child process: one provider's storage from JSON on stdin (secrets never on argv),
# a preflight, one upload, its stat.
CHILD = """
import asyncio, json, sys
from lkmedia.storage import AliOSSConfig, AzureConfig, GCPConfig, StorageError, make_storage
CONFIGS = {"gcp": GCPConfig, "azure": AzureConfig, "alioss": AliOSSConfig}
provider, args = json.load(sys.stdin)
async def main():
    async with make_storage(provider, CONFIGS[provider](**args)) as s:
        await s.preflight(timeout=5.0)
        await s.upload_bytes(b"over tls", "tls/probe.bin")
        print("ok", await s.stat("tls/probe.bin"))
try:
    asyncio.run(main())
except StorageError as e:
    print("error", e)
"""


def certificate(d: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (its own CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lkmedia test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = d / "cert.pem", d / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


class TokenServer(ThreadingHTTPServer):
    """Google's OAuth token endpoint in small: checks the JWT assertion's RS256 signature
    against the service account's public key and answers with a bearer token."""

    daemon_threads = True

    def __init__(self, tls: tuple[str, str], private_key: str) -> None:
        from cryptography.hazmat.primitives import serialization

        self.public_key: Any = serialization.load_pem_private_key(private_key.encode(), None).public_key()  # type: ignore[union-attr]
        self.claims: list[dict[str, Any]] = []
        self.refused = 0
        super().__init__(("127.0.0.1", free_port()), _TokenHandler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*tls)
        self.socket = ctx.wrap_socket(self.socket, server_side=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server_address[1]}/token"


class _TokenHandler(BaseHTTPRequestHandler):
    server: TokenServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        return None

    def do_POST(self) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        form = dict(urllib.parse.parse_qsl(self.rfile.read(int(self.headers["Content-Length"])).decode()))
        head, body, sig = form["assertion"].split(".")
        try:
            self.server.public_key.verify(_b64(sig), f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except Exception:
            self.server.refused += 1
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.server.claims.append(json.loads(_b64(body)))
        out = json.dumps({"access_token": "test-token", "expires_in": 3600, "token_type": "Bearer"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


def _b64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(params=PROVIDERS)
def https_target(request: pytest.FixtureRequest, tls: tuple[str, str], tmp_path: Path
                 ) -> Iterator[tuple[str, dict[str, Any], Any]]:
    """(provider, its config's arguments, the token server or None), the server on HTTPS."""
    provider = request.param
    why = missing(provider)
    if why:
        pytest.fail(why)
    token: TokenServer | None = None
    server: Any
    if provider == "gcp":
        creds = service_account()
        token = TokenServer(tls, creds["private_key"])
        threading.Thread(target=token.serve_forever, daemon=True).start()
        creds["token_uri"] = token.url
        server = FakeGCSServer(tmp_path / "gcs", tls=tls).start()
        server.create_bucket(BUCKET)
        args = {"bucket": BUCKET, "endpoint": server.endpoint, "credentials_json": json.dumps(creds)}
    elif provider == "azure":
        server = AzuriteServer(tmp_path / "azurite", tls=tls).start()
        server.create_container(BUCKET)
        args = {"account_name": server.account_name, "account_key": server.account_key, "container_name": BUCKET,
                "endpoint": server.endpoint}
    else:
        server = OSSServer(tmp_path / "oss", tls=tls).start()
        server.create_bucket(BUCKET)
        args = {"access_key": server.access_key, "secret": server.secret, "region": server.region,
                "endpoint": server.endpoint, "bucket": BUCKET}
    try:
        yield provider, args, token
    finally:
        server.cleanup()
        if token is not None:
            token.shutdown()
            token.server_close()


def run_child(provider: str, args: dict[str, Any], cafile: str | None) -> str:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR", "STORAGE_EMULATOR_HOST", "REQUESTS_CA_BUNDLE")}
    env.update({"NO_PROXY": "127.0.0.1", **({"SSL_CERT_FILE": cafile} if cafile else {})})
    r = subprocess.run([sys.executable, "-c", CHILD], input=json.dumps([provider, args]), capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip().splitlines()[-1]


def test_ssl_cert_file_is_honoured(https_target: tuple[str, dict[str, Any], Any], tls: tuple[str, str]) -> None:
    provider, args, token = https_target
    refused = run_child(provider, args, None)
    assert refused.startswith("error ") and "certificate" in refused.lower(), refused
    assert args.get("secret", "\0") not in refused and args.get("account_key", "\0") not in refused
    assert run_child(provider, args, tls[0]) == "ok 8"
    if token is not None:  # GCS: a real token exchange, signed with the service account's key
        assert token.claims and token.refused == 0
        claims = token.claims[-1]
        assert claims["aud"] == token.url and "devstorage" in claims["scope"]
        assert claims["iss"] == json.loads(args["credentials_json"])["client_email"]
        # a key the token endpoint does not know (revoked, or another account's): refused at once
        other = service_account()
        other["token_uri"] = token.url
        t0 = time.monotonic()
        wrong = run_child(provider, {**args, "credentials_json": json.dumps(other)}, tls[0])
        took = time.monotonic() - t0
        assert "was refused by" in wrong and "(HTTP 401)" in wrong and token.refused == 1, wrong
        assert other["private_key"].splitlines()[1] not in wrong
        assert took < 5.0, took
        print(f"gcp: a key the token endpoint refuses: {took:.2f} s (a whole child process)")
    print(f"{provider}: refused without SSL_CERT_FILE ({refused[6:90]}...), uploaded with it")
