"""From configuration to Storage objects, with the Go egress's resolution order:
per-output storage -> request storage -> the server's ``storage:`` section; and the
server's ``backup:`` section for uploads that fail.

``storage: {prefix, generate_presigned_url, s3|gcp|azure|alioss}`` is LiveKit's shape;
the older top-level ``s3:`` / ``gcp:`` / ``azure:`` / ``alioss:`` keys are read too.
A ``backup:`` with no provider is a local directory (its ``prefix``, as the Go egress's
local uploader does), and the obsolete ``backup_storage: <dir>`` key means the same.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from .base import Storage, StorageConfigError
from .cloud import AliOSSStorage, AzureStorage, GCPStorage
from .config import S3Config
from .local import LocalStorage
from .s3 import S3Storage

log = logging.getLogger("lkmedia.storage")

_PROVIDERS = ("s3", "gcp", "azure", "alioss")
_SECTION_KEYS = {"prefix", "generate_presigned_url", *_PROVIDERS}


@dataclass
class StorageSettings:
    """The server's storage configuration, parsed once at start-up."""

    prefix: str = ""
    s3: S3Config | None = None
    provider: str | None = None  # "s3", or an unsupported provider name (fails when used)
    backup: Storage | None = None

    def default_storage(self) -> Storage | None:
        """The server's own storage (None: outputs stay where they are written)."""
        if self.provider is None:
            return None
        if self.provider != "s3" or self.s3 is None:
            _unsupported(self.provider, f"storage.{self.provider}")
        return S3Storage(self.s3, prefix=self.prefix)


def _unsupported(provider: str, where: str) -> NoReturn:
    {"gcp": GCPStorage, "azure": AzureStorage, "alioss": AliOSSStorage}[provider](where=where)
    raise StorageConfigError(f"{where}: {provider} is not supported")  # (the line above raises)


def _section(d: Any, where: str) -> tuple[str, str | None, S3Config | None]:
    if not isinstance(d, Mapping):
        raise StorageConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    for k in d:
        if k not in _SECTION_KEYS:
            log.warning("config: unknown key %s.%s ignored", where, k)
    prefix = d.get("prefix") or ""
    if not isinstance(prefix, str):
        raise StorageConfigError(f"{where}.prefix: expected a string, got {prefix!r}")
    if d.get("generate_presigned_url"):
        log.warning("config: %s.generate_presigned_url is not supported yet; locations are plain URLs", where)
    given = [p for p in _PROVIDERS if d.get(p)]
    if len(given) > 1:
        raise StorageConfigError(f"{where}: only one of s3, gcp, azure, alioss may be set (got {', '.join(given)})")
    if not given:
        return prefix, None, None
    provider = given[0]
    if provider == "s3":
        s3 = S3Config.from_yaml(d["s3"], f"{where}.s3")
        s3.validate()
        return prefix, "s3", s3
    _unsupported(provider, f"{where}.{provider}")
    return prefix, provider, None  # not reached


def settings_from_yaml(conf: Mapping[str, Any]) -> StorageSettings:
    """Read ``storage`` (or top-level ``s3``/``gcp``/``azure``/``alioss``) and ``backup``
    from a parsed egress config; a bad value raises StorageConfigError naming the key."""
    section: dict[str, Any] = dict(conf.get("storage") or {})
    for p in _PROVIDERS:
        if conf.get(p):
            if section.get(p):
                raise StorageConfigError(f"{p}: set both at the top level and under storage")
            section[p] = conf[p]
    prefix, provider, s3 = _section(section, "storage")
    settings = StorageSettings(prefix=prefix, s3=s3, provider=provider)
    backup = conf.get("backup")
    legacy = conf.get("backup_storage")
    if backup:
        bprefix, bprovider, bs3 = _section(backup, "backup")
        if bprovider == "s3" and bs3 is not None:
            settings.backup = S3Storage(bs3, prefix=bprefix)
        else:
            settings.backup = LocalStorage(bprefix or os.getcwd())
    elif legacy:
        if not isinstance(legacy, str):
            raise StorageConfigError(f"backup_storage: expected a directory, got {legacy!r}")
        settings.backup = LocalStorage(legacy)
    return settings


def storage_for_request(upload: Any, settings: StorageSettings | None = None) -> Storage | None:
    """The Storage for a request's upload target: an ``S3Upload`` / ``GCPUpload`` /
    ``AzureBlobUpload`` / ``AliOSSUpload`` message, a ``StorageConfig`` message (its
    oneof), or None for the server default. The server's prefix applies to all."""
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
        return S3Storage(s3, prefix=settings.prefix)
    if name == "GCPUpload":
        GCPStorage(where="request gcp")
    if name == "AzureBlobUpload":
        AzureStorage(where="request azure")
    if name == "AliOSSUpload":
        AliOSSStorage(where="request aliOSS")
    raise StorageConfigError(f"unknown upload target {name}")
