"""The egress manifest: a JSON file beside the outputs that lists what was recorded and
where it was stored, byte-compatible with the Go egress (``pkg/config/manifest.go``):
same keys in the same order, empty values left out, times as Go writes them, and a
trailing newline (Go's json.Encoder).

The manifest is named ``<egress_id>.json`` and stored in the directory of the output it
describes. It is written even with ``disable_manifest`` when the backup storage was
used, so a user can find what went where.
"""
from __future__ import annotations

import json
import os
import posixpath
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .uploader import Uploader, UploadResult

_HEADER = ("egress_id", "room_id", "room_name", "url", "started_at", "ended_at", "publisher_identity",
           "track_id", "track_kind", "track_source", "audio_track_id", "video_track_id")


def go_time(t: float | datetime) -> str:
    """A time as Go's time.Time marshals to JSON (RFC 3339, fraction without trailing zeros)."""
    d = t.astimezone(UTC) if isinstance(t, datetime) else datetime.fromtimestamp(t, UTC)
    frac = f"{d.microsecond:06d}".rstrip("0")
    return d.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"


def _compact(d: dict[str, Any]) -> dict[str, Any]:
    """Go's omitempty: drop "", 0, empty lists and None."""
    return {k: v for k, v in d.items() if v not in ("", 0, None, [])}


@dataclass
class ManifestPlaylist:
    location: str = ""
    segments: list[dict[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def update_location(self, location: str) -> None:
        with self._lock:
            self.location = location

    def add_segment(self, filename: str, location: str) -> None:
        with self._lock:
            self.segments.append(_compact({"filename": filename, "location": location}))

    def as_json(self) -> dict[str, Any]:
        with self._lock:
            return _compact({"location": self.location, "segments": list(self.segments)})


@dataclass
class Manifest:
    """Fill the header from the request and EgressInfo; sinks add what they stored."""

    egress_id: str = ""
    room_id: str = ""
    room_name: str = ""
    url: str = ""
    started_at: int = 0  # unix nanoseconds, as EgressInfo
    ended_at: int = 0
    publisher_identity: str = ""
    track_id: str = ""
    track_kind: str = ""
    track_source: str = ""
    audio_track_id: str = ""
    video_track_id: str = ""
    files: list[dict[str, str]] = field(default_factory=list)
    playlists: list[ManifestPlaylist] = field(default_factory=list)
    images: list[dict[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add_file(self, filename: str, location: str) -> None:
        with self._lock:
            self.files.append(_compact({"filename": filename, "location": location}))

    def add_playlist(self) -> ManifestPlaylist:
        p = ManifestPlaylist()
        with self._lock:
            self.playlists.append(p)
        return p

    def add_image(self, filename: str, timestamp: float | datetime, location: str) -> None:
        with self._lock:
            # Go's omitempty never drops a time.Time: the timestamp is always written.
            self.images.append({**_compact({"filename": filename}), "timestamp": go_time(timestamp),
                                **_compact({"location": location})})

    def as_json(self) -> dict[str, Any]:
        with self._lock:
            out = _compact({k: getattr(self, k) for k in _HEADER})
            out.update(_compact({"files": list(self.files),
                                 "playlists": [p.as_json() for p in self.playlists],
                                 "images": list(self.images)}))
        return out

    def close(self, ended_at: int | None = None) -> bytes:
        """The final JSON (sets ``ended_at``, unix ns)."""
        if ended_at is not None:
            self.ended_at = ended_at
        return (json.dumps(self.as_json(), ensure_ascii=False, separators=(",", ":")) + "\n").encode()

    @staticmethod
    def filename_for(egress_id: str, output_filename: str) -> str:
        """``<egress_id>.json`` in the directory of ``output_filename`` (a storage path,
        without the storage prefix, which the uploader adds)."""
        return posixpath.join(posixpath.dirname(output_filename), f"{egress_id or 'manifest'}.json")

    async def upload(self, uploader: Uploader, output_filename: str, *,
                     ended_at: int | None = None, local_dir: str | None = None) -> UploadResult:
        """Upload the closed manifest beside ``output_filename``; its location is
        EgressInfo.manifest_location. With no storage configured it is written to
        ``local_dir`` instead (beside the local outputs)."""
        data = self.close(ended_at)
        name = self.filename_for(self.egress_id, output_filename)
        if uploader.storage is None and local_dir is not None:
            return await uploader.upload_file_data_locally(data, os.path.join(local_dir, name), name)
        return await uploader.upload_bytes(data, name, content_type="application/json")
