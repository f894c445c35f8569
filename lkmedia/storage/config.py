"""Storage configuration as LiveKit writes it: the Go egress YAML (``storage:``, ``s3:``,
``backup:``, ...) and the request messages (``S3Upload``, ``GCPUpload``, ...).

Request messages are read by field name, so this module needs no protobuf import:
anything with the attributes of ``livekit.protocol.egress.S3Upload`` works.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

from .base import RetryPolicy, StorageConfigError

_MIB = 1 << 20
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def yaml_value(k: str, v: Any, key: str) -> Any:
    """One storage key's YAML value (S3's and the other providers'), checked for its type."""
    if k in ("min_retry_delay", "max_retry_delay", "connect_timeout", "read_timeout"):
        return parse_duration(v, key)
    if k in ("max_retries", "part_size", "multipart_threshold"):
        if isinstance(v, bool) or not isinstance(v, int):
            raise StorageConfigError(f"{key}: expected an integer, got {v!r}")
        return v
    if k == "force_path_style":
        if not isinstance(v, bool):
            raise StorageConfigError(f"{key}: expected true or false, got {v!r}")
        return v
    if k == "metadata":
        if v is not None and not isinstance(v, Mapping):
            raise StorageConfigError(f"{key}: expected a mapping of strings")
        return {str(a): str(b) for a, b in (v or {}).items()}
    if v is not None and not isinstance(v, str | int | float):
        raise StorageConfigError(f"{key}: expected a string, got {type(v).__name__}")
    return "" if v is None else str(v)


def check_endpoint(endpoint: str, provider: str) -> None:
    """An endpoint must be a host (https:// is implied) or an http(s) URL with a valid port."""
    if not endpoint:
        return
    try:
        parts = urlsplit(endpoint if "://" in endpoint else "https://" + endpoint)
        ok = bool(parts.hostname) and parts.scheme in ("http", "https")
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        ok = False
    if not ok:
        raise StorageConfigError(f"{provider}: endpoint {endpoint!r} is not a host or http(s) URL")


def parse_duration(value: Any, key: str) -> float:
    """Seconds from a Go duration: "100ms", "5s", "1m30s"; an int is nanoseconds (as Go's
    YAML reads it); a float is seconds."""
    if isinstance(value, bool):
        raise StorageConfigError(f"{key}: expected a duration like '5s', got {value!r}")
    if isinstance(value, int):
        return value / 1e9
    if isinstance(value, float):
        return value
    if isinstance(value, str):
        s = value.strip()
        if s == "0":
            return 0.0
        pos, total = 0, 0.0
        for m in _DURATION.finditer(s):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if s and pos == len(s):
            return total
    raise StorageConfigError(f"{key}: expected a duration like '100ms' or '5s', got {value!r}")


@dataclass
class S3Config:
    """LiveKit's S3Config (Go YAML keys) plus lkmedia's transfer knobs. ``secret``,
    ``session_token`` and the proxy password stay out of repr()."""

    bucket: str = ""
    access_key: str = ""
    secret: str = field(default="", repr=False)
    session_token: str = field(default="", repr=False)
    region: str = ""
    endpoint: str = ""
    force_path_style: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    tagging: str = ""
    content_disposition: str = ""
    assume_role_arn: str = ""
    assume_role_external_id: str = ""
    proxy_url: str = ""
    proxy_username: str = ""
    proxy_password: str = field(default="", repr=False)
    max_retries: int = 5
    min_retry_delay: float = 0.1
    max_retry_delay: float = 5.0
    part_size: int = 8 * _MIB
    multipart_threshold: int = 16 * _MIB
    connect_timeout: float = 5.0
    read_timeout: float = 60.0

    def validate(self) -> None:
        if not self.bucket:
            raise StorageConfigError("s3: bucket is required")
        if bool(self.access_key) != bool(self.secret):
            missing = "secret" if self.access_key else "access_key"
            raise StorageConfigError(f"s3: {missing} is required when the other credential is set "
                                     f"(bucket {self.bucket!r})")
        if self.assume_role_arn:
            raise StorageConfigError("s3: assume_role_arn is not supported yet by lkmedia "
                                     f"(bucket {self.bucket!r}); use access_key and secret")
        if self.part_size < 5 * _MIB:
            raise StorageConfigError(f"s3: part_size must be at least 5 MiB, got {self.part_size}")
        check_endpoint(self.endpoint, "s3")
        self.retry_policy()

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.max_retries, self.min_retry_delay, self.max_retry_delay)

    def endpoint_url(self) -> str | None:
        if not self.endpoint:
            return None
        return self.endpoint if "://" in self.endpoint else "https://" + self.endpoint

    def proxies(self) -> dict[str, str]:
        if not self.proxy_url:
            return {}
        url = proxy_url(self.proxy_url, self.proxy_username, self.proxy_password)
        return {"http": url, "https": url}

    # -- sources -------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, d: Mapping[str, Any], where: str = "s3") -> S3Config:
        """From the Go egress YAML keys; unknown keys are an error naming the key."""
        # aws_log_level: accepted for compatibility; botocore logs through logging
        return from_mapping(cls, d, where, "S3", ignored=("aws_log_level",))

    @classmethod
    def from_proto(cls, msg: Any, defaults: S3Config | None = None) -> S3Config:
        """From a request's ``S3Upload``; retry and transfer settings come from the
        server's own s3 config (``defaults``), as in the Go egress."""
        base = defaults or cls()
        proxy: Any = getattr(msg, "proxy", None)
        has_proxy = proxy is not None and (not hasattr(msg, "HasField") or msg.HasField("proxy"))
        return replace(
            base,
            access_key=msg.access_key, secret=msg.secret,
            session_token=getattr(msg, "session_token", ""),
            assume_role_arn=getattr(msg, "assume_role_arn", ""),
            assume_role_external_id=getattr(msg, "assume_role_external_id", ""),
            region=msg.region, endpoint=msg.endpoint, bucket=msg.bucket,
            force_path_style=bool(msg.force_path_style),
            metadata=dict(getattr(msg, "metadata", {}) or {}),
            tagging=getattr(msg, "tagging", ""),
            content_disposition=getattr(msg, "content_disposition", ""),
            proxy_url=proxy.url if has_proxy else "",
            proxy_username=proxy.username if has_proxy else "",
            proxy_password=proxy.password if has_proxy else "",
        )


C = TypeVar("C")


def from_mapping(cls: type[C], d: Any, where: str, provider: str, ignored: tuple[str, ...] = ()) -> C:
    """A provider's config dataclass from its YAML mapping: each value checked for its
    type, ``proxy_config`` (or the older ``proxy``) read into the proxy fields, an unknown
    key an error naming it; a zero retry setting means the default, as in Go."""
    if not isinstance(d, Mapping):
        raise StorageConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    known = names - {"proxy_url", "proxy_username", "proxy_password"}
    args: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{where}.{k}"
        if k in ignored:
            continue
        if k in ("proxy_config", "proxy") and "proxy_url" in names:
            if v:
                args.update(parse_proxy(v, key))
            continue
        if k not in known:
            raise StorageConfigError(f"{key}: unknown {provider} key")
        args[k] = yaml_value(k, v, key)
    conf: Any = cls(**args)
    conf.max_retries = conf.max_retries or 5
    conf.min_retry_delay = conf.min_retry_delay or 0.1
    conf.max_retry_delay = conf.max_retry_delay or 5.0
    result: C = conf
    return result


def proxy_url(url: str, username: str, password: str) -> str:
    """The Go ``proxy_config`` as one URL, the credentials in it (quoted)."""
    if not username:
        return url
    scheme, rest = url.split("://", 1) if "://" in url else ("http", url)
    return f"{scheme}://{quote(username, safe='')}:{quote(password, safe='')}@{rest}"


def parse_proxy(v: Any, key: str) -> dict[str, str]:
    """A Go ``proxy_config`` mapping as the ``proxy_url`` / ``proxy_username`` / ``proxy_password`` fields."""
    if not isinstance(v, Mapping):
        raise StorageConfigError(f"{key}: expected a mapping with url, username, password")
    return {"proxy_url": str(v.get("url") or ""), "proxy_username": str(v.get("username") or ""),
            "proxy_password": str(v.get("password") or "")}
