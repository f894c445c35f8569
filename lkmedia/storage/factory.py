"""From configuration to Storage objects, with the Go egress's resolution order:
per-output storage -> request storage -> the server's ``storage:`` section; and the
server's ``backup:`` section for uploads that fail.

``storage: {prefix, generate_presigned_url, s3|gcp|azure|alioss}`` is LiveKit's shape;
the older top-level ``s3:`` / ``gcp:`` / ``azure:`` / ``alioss:`` keys are read too.
Any provider may be the ``backup:`` too; a ``backup:`` with no provider is a local
directory (its ``prefix``, as the Go egress's local uploader does), and the obsolete
``backup_storage: <dir>`` key means the same. A provider whose extra is not installed
fails here, at start-up, with the pip command to run.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .base import Storage, StorageConfigError
from .cloud import make_storage, provider_class
from .cloud_config import PROVIDER_CONFIGS, AliOSSConfig, AzureConfig, GCPConfig
from .config import S3Config
from .local import LocalStorage
from .s3 import S3Storage

log = logging.getLogger("lkmedia.storage")

_PROVIDERS = ("s3", "gcp", "azure", "alioss")
_SECTION_KEYS = {"prefix", "generate_presigned_url", *_PROVIDERS}
#: request message -> (provider, its config class), read by field name
_REQUESTS: dict[str, tuple[str, Any]] = {"GCPUpload": ("gcp", GCPConfig), "AzureBlobUpload": ("azure", AzureConfig),
                                         "AliOSSUpload": ("alioss", AliOSSConfig)}


@dataclass
class StorageSettings:
    """The server's storage configuration, parsed once at start-up."""

    prefix: str = ""
    s3: S3Config | None = None
    provider: str | None = None  # "s3", "gcp", "azure", "alioss"; None: outputs stay local
    cloud: Any = None  # the GCPConfig / AzureConfig / AliOSSConfig of a provider other than S3
    presign: bool = False  # generate_presigned_url: results carry signed URLs
    backup: Storage | None = None

    def default_storage(self) -> Storage | None:
        """The server's own storage (None: outputs stay where they are written)."""
        if self.provider is None:
            return None
        if self.provider == "s3":
            assert self.s3 is not None
            return S3Storage(self.s3, prefix=self.prefix, presign=self.presign)
        return make_storage(self.provider, self.cloud, prefix=self.prefix, presign=self.presign,
                            where=f"storage.{self.provider}")

    def defaults_for(self, provider: str) -> Any:
        """The server's settings of ``provider`` (retries, endpoint) for a request's own upload."""
        if provider == "s3":
            return self.s3
        return self.cloud if self.provider == provider else None


@dataclass
class _Section:
    prefix: str = ""
    provider: str | None = None
    config: Any = None
    presign: bool = False


def _section(d: Any, where: str) -> _Section:
    if not isinstance(d, Mapping):
        raise StorageConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    for k in d:
        if k not in _SECTION_KEYS:
            log.warning("config: unknown key %s.%s ignored", where, k)
    prefix = d.get("prefix") or ""
    if not isinstance(prefix, str):
        raise StorageConfigError(f"{where}.prefix: expected a string, got {prefix!r}")
    presign = d.get("generate_presigned_url") or False
    if not isinstance(presign, bool):
        raise StorageConfigError(f"{where}.generate_presigned_url: expected true or false, got {presign!r}")
    given = [p for p in _PROVIDERS if d.get(p)]
    if len(given) > 1:
        raise StorageConfigError(f"{where}: only one of s3, gcp, azure, alioss may be set (got {', '.join(given)})")
    if not given:
        return _Section(prefix, presign=presign)
    provider = given[0]
    if provider == "s3":
        conf: Any = S3Config.from_yaml(d["s3"], f"{where}.s3")
    else:
        provider_class(provider, f"{where}.{provider}")  # the extra is installed: fail at start-up if not
        conf = PROVIDER_CONFIGS[provider].from_yaml(d[provider], f"{where}.{provider}")
    try:
        conf.validate()
    except StorageConfigError as e:  # "gcp: ..." -> "storage.gcp: ...": the key in this file
        msg = str(e)
        raise StorageConfigError(f"{where}.{msg}" if msg.startswith(f"{provider}:") else msg) from None
    return _Section(prefix, provider, conf, presign)


def settings_from_yaml(conf: Mapping[str, Any]) -> StorageSettings:
    """Read ``storage`` (or top-level ``s3``/``gcp``/``azure``/``alioss``) and ``backup``
    from a parsed egress config; a bad value raises StorageConfigError naming the key."""
    section: dict[str, Any] = dict(conf.get("storage") or {})
    for p in _PROVIDERS:
        if conf.get(p):
            if section.get(p):
                raise StorageConfigError(f"{p}: set both at the top level and under storage")
            section[p] = conf[p]
    main = _section(section, "storage")
    settings = StorageSettings(prefix=main.prefix, s3=main.config if main.provider == "s3" else None,
                               provider=main.provider, cloud=main.config if main.provider != "s3" else None,
                               presign=main.presign)
    backup = conf.get("backup")
    legacy = conf.get("backup_storage")
    if backup:
        b = _section(backup, "backup")
        if b.provider == "s3":
            settings.backup = S3Storage(b.config, prefix=b.prefix, presign=b.presign)
        elif b.provider is not None:
            settings.backup = make_storage(b.provider, b.config, prefix=b.prefix, presign=b.presign,
                                           where=f"backup.{b.provider}")
        else:
            settings.backup = LocalStorage(b.prefix or os.getcwd())
    elif legacy:
        if not isinstance(legacy, str):
            raise StorageConfigError(f"backup_storage: expected a directory, got {legacy!r}")
        settings.backup = LocalStorage(legacy)
    return settings


def storage_for_request(upload: Any, settings: StorageSettings | None = None) -> Storage | None:
    """The Storage for a request's upload target: an ``S3Upload`` / ``GCPUpload`` /
    ``AzureBlobUpload`` / ``AliOSSUpload`` message, a ``StorageConfig`` message (its
    oneof), or None for the server default. The server's prefix and
    ``generate_presigned_url`` apply to all."""
    settings = settings or StorageSettings()
    if upload is None:
        return settings.default_storage()
    name = type(upload).__name__
    if name == "StorageConfig" and hasattr(upload, "WhichOneof"):
        which = upload.WhichOneof("provider")
        if which is None:
            return settings.default_storage()
        return storage_for_request(getattr(upload, which), settings)
    if name == "S3Upload" or hasattr(upload, "force_path_style"):
        s3 = S3Config.from_proto(upload, settings.s3)
        return S3Storage(s3, prefix=settings.prefix, presign=settings.presign)
    if name in _REQUESTS:
        provider, config_class = _REQUESTS[name]
        where = f"request {provider}"
        provider_class(provider, where)
        conf = config_class.from_proto(upload, settings.defaults_for(provider))
        return make_storage(provider, conf, prefix=settings.prefix, presign=settings.presign, where=where)
    raise StorageConfigError(f"unknown upload target {name}")
