"""Uploads that never lose a file: S3 (aioboto3) and local-directory storage, the
uploader with retries and backup, the LiveKit manifest, and the HLS segment hook."""
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
from .cloud import AliOSSStorage, AzureStorage, GCPStorage
from .config import S3Config, parse_duration
from .factory import StorageSettings, settings_from_yaml, storage_for_request
from .local import LocalStorage
from .manifest import Manifest, ManifestPlaylist
from .s3 import S3Storage
from .segments import SegmentUploader
from .uploader import Uploader, UploadResult

__all__ = [
    "AliOSSStorage", "AzureStorage", "GCPStorage", "LocalStorage", "Manifest", "ManifestPlaylist",
    "RetryPolicy", "S3Config", "S3Storage", "SegmentUploader", "Storage", "StorageConfigError",
    "StorageError", "StorageSettings", "StoredObject", "UploadResult", "Uploader", "content_type_for",
    "join_key", "parse_duration", "settings_from_yaml", "storage_for_request",
]
