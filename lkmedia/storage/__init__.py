"""Uploads that never lose a file: S3 (aioboto3), Google Cloud Storage, Azure Blob and
Alibaba OSS (each with its provider's asyncio library, an optional extra) and
local-directory storage, the uploader with retries and backup, the LiveKit manifest, and
the HLS segment hook. ``GCPStorage``, ``AzureStorage`` and ``AliOSSStorage`` are imported
when first used (their libraries are extras)."""
from __future__ import annotations

from .base import (
    RetryPolicy,
    Storage,
    StorageConfigError,
    StorageError,
    StoredObject,
    content_type_for,
    join_key,
)
from .cloud import make_storage, provider_class
from .cloud_config import AliOSSConfig, AzureConfig, GCPConfig
from .config import S3Config, parse_duration
from .factory import StorageSettings, settings_from_yaml, storage_for_request
from .local import LocalStorage
from .manifest import Manifest, ManifestPlaylist
from .remote import RemoteStorage
from .s3 import S3Storage
from .segments import SegmentUploader
from .uploader import Uploader, UploadResult

__all__ = [
    "AliOSSConfig", "AzureConfig", "GCPConfig", "LocalStorage", "Manifest", "ManifestPlaylist", "RemoteStorage",
    "RetryPolicy", "S3Config", "S3Storage", "SegmentUploader", "Storage", "StorageConfigError",
    "StorageError", "StorageSettings", "StoredObject", "UploadResult", "Uploader", "content_type_for",
    "join_key", "make_storage", "parse_duration", "provider_class", "settings_from_yaml", "storage_for_request",
]


def __getattr__(name: str) -> type[Storage]:
    """``GCPStorage``, ``AzureStorage``, ``AliOSSStorage``: imported on first use."""
    from . import cloud

    klass: type[Storage] = getattr(cloud, name)
    return klass
