"""Google Cloud Storage, Azure Blob and Alibaba OSS settings as LiveKit writes them: the Go
egress YAML keys (``gcp: {credentials_json, bucket, proxy_config}``, ``azure: {account_name,
account_key, container_name}``, ``alioss: {access_key, secret, region, endpoint, bucket}``)
and the request messages (``GCPUpload``, ``AzureBlobUpload``, ``AliOSSUpload``).

On top of the Go keys, all optional: ``endpoint`` for GCS and Azure (an emulator or a
sovereign cloud; the Go egress has none and always talks to the public hosts), and the
S3 section's retry and transfer keys (``max_retries``, ``min_retry_delay``,
``max_retry_delay``, ``part_size``, ``multipart_threshold``), which default as for S3.
Secrets stay out of ``repr()``.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit

from .base import RetryPolicy, StorageConfigError
from .config import check_endpoint, from_mapping, proxy_url

_MIB = 1 << 20


@dataclass
class _Provider:
    """Retry and transfer keys every provider shares (as S3Config has them)."""

    provider: ClassVar[str] = ""
    proto_fields: ClassVar[tuple[str, ...]] = ()

    max_retries: int = 5
    min_retry_delay: float = 0.1
    max_retry_delay: float = 5.0
    part_size: int = 8 * _MIB
    multipart_threshold: int = 16 * _MIB

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.max_retries, self.min_retry_delay, self.max_retry_delay)

    def validate(self) -> None:
        self.retry_policy()
        if self.part_size < 5 * _MIB:
            raise StorageConfigError(f"{self.provider}: part_size must be at least 5 MiB, got {self.part_size}")
        check_endpoint(getattr(self, "endpoint", ""), self.provider)

    @classmethod
    def from_yaml(cls, d: Mapping[str, Any], where: str) -> Self:
        """From the YAML keys; an unknown key or a value of the wrong type is an error naming it."""
        return from_mapping(cls, d, where, cls.provider)

    @classmethod
    def from_proto(cls, msg: Any, defaults: Self | None = None) -> Self:
        """From a request's upload message; retry and transfer settings (and an lkmedia
        endpoint) come from the server's section of the same provider, if any."""
        base = defaults if defaults is not None else cls()
        return replace(base, **{name: getattr(msg, proto) for name, proto in cls._proto_map().items()})

    @classmethod
    def _proto_map(cls) -> dict[str, str]:
        return {f: f for f in cls.proto_fields}


@dataclass
class GCPConfig(_Provider):
    """``credentials_json``: a service account key (the JSON text); empty: the file named by
    ``GOOGLE_APPLICATION_CREDENTIALS``, else the machine's default credentials.
    ``endpoint`` (lkmedia): the API root, e.g. an emulator; ``STORAGE_EMULATOR_HOST`` is
    honoured as Google's SDKs do."""

    provider: ClassVar[str] = "gcp"

    bucket: str = ""
    credentials_json: str = field(default="", repr=False)
    endpoint: str = ""
    proxy_url: str = ""
    proxy_username: str = ""
    proxy_password: str = field(default="", repr=False)

    def validate(self) -> None:
        if not self.bucket:
            raise StorageConfigError("gcp: bucket is required")
        super().validate()
        if self.part_size % (256 * 1024):  # resumable chunks are multiples of 256 KiB
            raise StorageConfigError(f"gcp: part_size must be a multiple of 256 KiB, got {self.part_size}")
        self.credentials()

    def credentials(self) -> dict[str, Any] | None:
        """The service account key as a mapping (None: no key given, use the environment).
        A key that is not a service account's JSON is an error that shows none of it."""
        text = self.credentials_json
        source = "credentials_json"
        if not text and os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
            source = "GOOGLE_APPLICATION_CREDENTIALS"
            try:
                with open(os.environ["GOOGLE_APPLICATION_CREDENTIALS"], encoding="utf-8") as f:
                    text = f.read()
            except OSError as e:
                raise StorageConfigError(f"gcp: {source} names a file that cannot be read "
                                         f"(bucket {self.bucket!r}): {e.strerror or e}") from None
        if not text:
            return None
        try:
            creds = json.loads(text)
        except ValueError:
            raise StorageConfigError(f"gcp: {source} is not valid JSON (bucket {self.bucket!r})") from None
        if not isinstance(creds, dict) or not creds.get("type"):
            raise StorageConfigError(f"gcp: {source} is not a Google credentials file: no \"type\" "
                                     f"(bucket {self.bucket!r})")
        if creds["type"] == "service_account":
            missing = [k for k in ("client_email", "private_key") if not creds.get(k)]
            if missing:
                raise StorageConfigError(f"gcp: {source} is a service account key without "
                                         f"{' and '.join(missing)} (bucket {self.bucket!r})")
            if "PRIVATE KEY" not in str(creds["private_key"]):
                raise StorageConfigError(f"gcp: {source}: private_key is not a PEM key (bucket {self.bucket!r})")
        return creds

    def proxy(self) -> str | None:
        return proxy_url(self.proxy_url, self.proxy_username, self.proxy_password) if self.proxy_url else None

    @classmethod
    def from_proto(cls, msg: Any, defaults: GCPConfig | None = None) -> GCPConfig:
        proxy: Any = getattr(msg, "proxy", None)
        has_proxy = proxy is not None and (not hasattr(msg, "HasField") or msg.HasField("proxy"))
        base = defaults if defaults is not None else cls()
        return replace(base, bucket=msg.bucket, credentials_json=msg.credentials,
                       proxy_url=proxy.url if has_proxy else "",
                       proxy_username=proxy.username if has_proxy else "",
                       proxy_password=proxy.password if has_proxy else "")


@dataclass
class AzureConfig(_Provider):
    """``account_name`` / ``account_key`` (empty: ``AZURE_STORAGE_ACCOUNT`` /
    ``AZURE_STORAGE_KEY``), ``container_name``. ``endpoint`` (lkmedia): the account's blob
    endpoint when it is not ``https://<account>.blob.core.windows.net`` (Azurite:
    ``http://127.0.0.1:10000/<account>``; sovereign clouds)."""

    provider: ClassVar[str] = "azure"
    proto_fields: ClassVar[tuple[str, ...]] = ("account_name", "account_key", "container_name")

    account_name: str = ""
    account_key: str = field(default="", repr=False)
    container_name: str = ""
    endpoint: str = ""

    def __post_init__(self) -> None:
        self.account_name = self.account_name or os.environ.get("AZURE_STORAGE_ACCOUNT", "")
        self.account_key = self.account_key or os.environ.get("AZURE_STORAGE_KEY", "")

    def validate(self) -> None:
        self.container_name = self.container_name.strip("/")
        if not self.account_name:
            raise StorageConfigError("azure: account_name is required (or AZURE_STORAGE_ACCOUNT)")
        if not self.account_key:
            raise StorageConfigError(f"azure: account_key is required (or AZURE_STORAGE_KEY) "
                                     f"(account {self.account_name!r})")
        if not self.container_name:
            raise StorageConfigError(f"azure: container_name is required (account {self.account_name!r})")
        super().validate()

    def account_url(self) -> str:
        if self.endpoint:
            return (self.endpoint if "://" in self.endpoint else "https://" + self.endpoint).rstrip("/")
        return f"https://{self.account_name}.blob.core.windows.net"


@dataclass
class AliOSSConfig(_Provider):
    """The Go keys; ``endpoint`` is the region's OSS host (``oss-cn-hangzhou.aliyuncs.com``)
    or any URL (an IP address is addressed path style, as the SDK does)."""

    provider: ClassVar[str] = "alioss"
    proto_fields: ClassVar[tuple[str, ...]] = ("access_key", "secret", "region", "endpoint", "bucket")

    access_key: str = ""
    secret: str = field(default="", repr=False)
    region: str = ""
    endpoint: str = ""
    bucket: str = ""

    def validate(self) -> None:
        if not self.bucket:
            raise StorageConfigError("alioss: bucket is required")
        if not self.access_key or not self.secret:
            missing = "secret" if self.access_key else "access_key"
            raise StorageConfigError(f"alioss: {missing} is required (bucket {self.bucket!r})")
        if not self.region and not self.endpoint:
            raise StorageConfigError(f"alioss: region or endpoint is required (bucket {self.bucket!r})")
        super().validate()

    def signing_region(self) -> str:
        """The V4 signature's region: ``region``, else read from an ``oss-<region>`` endpoint."""
        if self.region:
            return self.region.removeprefix("oss-")
        host = urlsplit(self.endpoint if "://" in self.endpoint else "https://" + self.endpoint).hostname or ""
        first = host.split(".", 1)[0]
        if first.startswith("oss-"):
            return first.removeprefix("oss-").removesuffix("-internal")
        raise StorageConfigError(f"alioss: set region (bucket {self.bucket!r}): the endpoint {self.endpoint!r} "
                                 "does not name one")


PROVIDER_CONFIGS: dict[str, type[_Provider]] = {"gcp": GCPConfig, "azure": AzureConfig, "alioss": AliOSSConfig}
