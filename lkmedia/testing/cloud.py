"""GCS, Azure Blob and Alibaba OSS in one shape for tests: each ``CloudTarget`` starts its
local server (fake-gcs-server, Azurite, the signature-checking OSS endpoint), makes
buckets, lists and reads them back, and gives the configurations lkmedia takes (Python,
service YAML, request message), good and bad."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .azurite import AzuriteServer, azurite_binary
from .gcs_server import FakeGCSServer, fake_gcs_binary
from .oss_server import OSSServer
from .server import ServerProcess

PROVIDERS = ("gcp", "azure", "alioss")


def missing(provider: str) -> str | None:
    """Why ``provider``'s server cannot start here (None: it can)."""
    if provider == "gcp" and fake_gcs_binary() is None:
        return "fake-gcs-server is not installed (scripts/setup.sh --test)"
    if provider == "azure" and azurite_binary() is None:
        return "Azurite is not installed (scripts/setup.sh --test)"
    return None


def service_account(email: str = "lkmedia-test@lkmedia-test.iam.gserviceaccount.com") -> dict[str, str]:
    """A service account key of the test's own (a fresh RSA key): fake-gcs-server takes
    any credentials, and it signs URLs the test can check with its public half."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return {"type": "service_account", "project_id": "lkmedia-test", "private_key_id": os.urandom(8).hex(),
            "private_key": pem, "client_email": email, "client_id": "1",
            "token_uri": "http://127.0.0.1:9/token"}  # never used: an emulator gets no token


class CloudTarget:
    """One provider's server and everything a test needs to talk about it."""

    def __init__(self, provider: str, root: Path) -> None:
        self.provider = provider
        self.server: Any
        if provider == "gcp":
            self.server = FakeGCSServer(root)
            self.creds = service_account()
            self.secret = self.creds["private_key"].splitlines()[1]  # a line of the key: never in logs
        elif provider == "azure":
            self.server = AzuriteServer(root)
            self.secret = self.server.account_key
        elif provider == "alioss":
            self.server = OSSServer(root)
            self.secret = self.server.secret
        else:
            raise ValueError(provider)

    @property
    def process(self) -> ServerProcess:
        server: ServerProcess = self.server
        return server

    def start(self) -> CloudTarget:
        self.server.start()
        return self

    def take_down(self) -> None:
        """The server goes away mid-request: SIGKILL; Azurite gets SIGTERM, since it keeps
        its containers' metadata in memory until it closes (a killed one forgets them)."""
        if self.provider == "azure":
            self.process.stop(timeout=5)
        else:
            self.process.kill()

    def create(self, bucket: str) -> str:
        if self.provider == "azure":
            return str(self.server.create_container(bucket))
        return str(self.server.create_bucket(bucket))

    def objects(self, bucket: str) -> dict[str, int]:
        listed: dict[str, int] = self.server.objects(bucket)
        return listed

    def size(self, bucket: str, key: str) -> int | None:
        """The stored object's size, None when there is none."""
        try:
            if self.provider == "azure":
                return int(self.server.client().get_blob_client(bucket, key).get_blob_properties().size)
            if self.provider == "gcp":
                return int(self.server.metadata(bucket, key)["size"])
            return len(self.server.download(bucket, key))
        except Exception:
            return None

    def download(self, bucket: str, key: str, dest: Path | None = None) -> bytes:
        data: bytes = self.server.download(bucket, key)
        if dest is not None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        return data

    def location(self, bucket: str, key: str) -> str:
        """Where lkmedia reports ``key`` (the server's address, path style)."""
        return f"{self.server.endpoint}/{bucket}/{key}"

    # -- configurations -------------------------------------------------------------------
    def config(self, bucket: str, **overrides: Any) -> Any:
        """lkmedia.storage's config (GCPConfig / AzureConfig / AliOSSConfig)."""
        if self.provider == "gcp":
            return self.server.gcp_config(bucket, **{"credentials_json": json.dumps(self.creds), **overrides})
        if self.provider == "azure":
            return self.server.azure_config(bucket, **overrides)
        return self.server.oss_config(bucket, **overrides)

    def yaml(self, bucket: str, **overrides: Any) -> dict[str, Any]:
        """The service config's ``storage.<provider>`` section (Go keys, plus ``endpoint``)."""
        c = self.config(bucket, **overrides)
        if self.provider == "gcp":
            return {"bucket": c.bucket, "credentials_json": c.credentials_json, "endpoint": c.endpoint}
        if self.provider == "azure":
            return {"account_name": c.account_name, "account_key": c.account_key,
                    "container_name": c.container_name, "endpoint": c.endpoint}
        return {"access_key": c.access_key, "secret": c.secret, "region": c.region, "endpoint": c.endpoint,
                "bucket": c.bucket}

    def request(self, bucket: str, *, bad: bool = False) -> tuple[str, Any]:
        """A request's upload message for ``bucket`` (``bad``: a wrong credential) and the
        output field it goes in (``gcp``, ``azure``, ``aliOSS``)."""
        from livekit.protocol import egress as lk

        if self.provider == "gcp":
            creds = json.dumps({"type": "service_account", "client_email": "x@y"} if bad else self.creds)
            return "gcp", lk.GCPUpload(bucket=bucket, credentials=creds)
        if self.provider == "azure":
            key = self.wrong_secret() if bad else self.server.account_key
            return "azure", lk.AzureBlobUpload(account_name=self.server.account_name, account_key=key,
                                               container_name=bucket)
        return "aliOSS", lk.AliOSSUpload(access_key=self.server.access_key,
                                         secret=self.wrong_secret() if bad else self.server.secret,
                                         region=self.server.region, endpoint=self.server.endpoint, bucket=bucket)

    def wrong_secret(self) -> str:
        """A credential of the right shape that the server refuses (GCS: none exists,
        fake-gcs-server takes any; a malformed key is refused by lkmedia itself)."""
        if self.provider == "azure":
            import base64

            return base64.b64encode(os.urandom(32)).decode()
        return "wrong-" + self.secret[::-1][:24]

    def bad_credential_reason(self) -> str:
        return {"gcp": "service account key without private_key", "azure": "authorization failed",
                "alioss": "the secret does not match"}[self.provider]

    def cleanup(self) -> None:
        self.server.cleanup()
