"""EgressInfo results (file, segments, stream, images) from what the sinks report.

Sinks report seconds or nanoseconds depending on their clock; EgressInfo wants Unix
nanoseconds for times and nanoseconds for durations, as the Go egress sends them.
Stream URLs are the sinks' redacted forms: a key never reaches EgressInfo.
"""
from __future__ import annotations

from typing import Any

from livekit.protocol import egress as lk

from .recipe import Recipe

_STREAM_STATUS = {"ACTIVE": lk.StreamInfo.ACTIVE, "FINISHED": lk.StreamInfo.FINISHED,
                  "FAILED": lk.StreamInfo.FAILED, "RECONNECTING": lk.StreamInfo.ACTIVE,
                  "STARTING": lk.StreamInfo.ACTIVE}


def unix_ns(t: Any) -> int:
    """A wall-clock time in seconds or nanoseconds, as Unix nanoseconds (0 if unknown)."""
    if not t:
        return 0
    t = float(t)
    return int(t) if t > 1e15 else int(t * 1e9)


def fill_results(info: lk.EgressInfo, recipe: Recipe, locations: dict[str, str] | None = None) -> None:
    """Replace info's results with what ``recipe``'s sinks wrote. ``locations`` maps a
    local path to where it was uploaded (defaults to the local path)."""
    loc = locations or {}
    del info.file_results[:]
    del info.segment_results[:]
    del info.stream_results[:]
    del info.image_results[:]
    for key, sink in recipe.sinks.items():
        res = sink.result or {}
        if key == "file" and res:
            info.file_results.add(
                filename=res.get("filename", ""), location=loc.get(res.get("location", ""), res.get("location", "")),
                size=int(res.get("size", 0)), duration=int(float(res.get("duration", 0)) * 1e9),
                started_at=unix_ns(res.get("started_at")), ended_at=unix_ns(res.get("ended_at")))
        elif key == "segments" and res:
            pl, lpl = res.get("playlist_location") or "", res.get("live_playlist_location") or ""
            info.segment_results.add(
                playlist_name=res.get("playlist_name", ""), live_playlist_name=res.get("live_playlist_name") or "",
                playlist_location=loc.get(pl, pl), live_playlist_location=loc.get(lpl, lpl),
                segment_count=int(res.get("segment_count", 0)), size=int(res.get("size", 0)),
                duration=int(float(res.get("duration", 0)) * 1e9),
                started_at=unix_ns(res.get("started_at")), ended_at=unix_ns(res.get("ended_at")))
        elif key == "stream":
            for d in res.get("streams", []):
                info.stream_results.add(
                    url=d.get("url", ""), status=_STREAM_STATUS.get(str(d.get("status", "")).upper(), lk.StreamInfo.ACTIVE),
                    error=d.get("error") or "", retries=int(d.get("retries") or 0),
                    last_retry_at=unix_ns(d.get("last_retry_at")), started_at=unix_ns(d.get("started_at")),
                    ended_at=unix_ns(d.get("ended_at")), duration=int(float(d.get("duration") or 0) * 1e9))
        elif key.startswith("images") and res:
            info.image_results.add(
                filename_prefix=res.get("filename_prefix", ""), image_count=int(res.get("image_count", 0)),
                started_at=unix_ns(res.get("started_at")), ended_at=unix_ns(res.get("ended_at")))
