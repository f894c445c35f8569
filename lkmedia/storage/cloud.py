"""GCP, Azure Blob and Alibaba OSS targets: named so configs that use them fail at once
with a clear message, instead of recording for an hour and failing at the upload."""
from __future__ import annotations

from typing import Any, NoReturn

from .base import StorageConfigError


def _unsupported(provider: str, where: str) -> NoReturn:
    raise StorageConfigError(
        f"{where}: {provider} uploads are not supported yet by lkmedia; use s3 (any S3-compatible "
        "service, e.g. GCS interoperability or MinIO) or a local directory")


class GCPStorage:
    kind = "gcp"

    def __init__(self, config: Any = None, *, where: str = "gcp", **_: Any) -> None:
        _unsupported("Google Cloud Storage", where)


class AzureStorage:
    kind = "azure"

    def __init__(self, config: Any = None, *, where: str = "azure", **_: Any) -> None:
        _unsupported("Azure Blob Storage", where)


class AliOSSStorage:
    kind = "alioss"

    def __init__(self, config: Any = None, *, where: str = "alioss", **_: Any) -> None:
        _unsupported("Alibaba Cloud OSS", where)
