"""EgressInfo: its results from what the sinks report, and how it is ended.

Sink results (lkmedia.sinks.results) give times in Unix seconds and durations in
seconds; EgressInfo wants Unix nanoseconds and nanoseconds, as the Go egress sends them:
the conversion is made here and nowhere else. Stream URLs are the sinks' redacted forms:
a key never reaches EgressInfo.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from livekit.protocol import egress as lk

from ..sinks.results import FileResult, ImagesResult, SegmentsResult, StreamResult

S = lk.EgressStatus
FINAL = frozenset({S.EGRESS_COMPLETE, S.EGRESS_FAILED, S.EGRESS_ABORTED, S.EGRESS_LIMIT_REACHED})
_STREAM_STATUS = {"ACTIVE": lk.StreamInfo.ACTIVE, "FINISHED": lk.StreamInfo.FINISHED,
                  "FAILED": lk.StreamInfo.FAILED, "RECONNECTING": lk.StreamInfo.ACTIVE,
                  "STARTING": lk.StreamInfo.ACTIVE}


def ns(seconds: float) -> int:
    """Seconds (a Unix time or a duration) as nanoseconds."""
    return int(seconds * 1e9) if seconds else 0


def set_status(info: lk.EgressInfo, status: int, error: str = "", details: str = "") -> lk.EgressInfo:
    """The one way an EgressInfo changes status: stamped, and ``ended_at`` set when final."""
    info.status = status  # type: ignore[assignment]
    info.updated_at = time.time_ns()
    if error:
        info.error = error
    if details:
        info.details = details
    if status in FINAL:
        info.ended_at = info.updated_at
    return info


def ended(info: lk.EgressInfo, outcome: str, error: str = "", details: str = "") -> lk.EgressInfo:
    """A copy of ``info`` ended from outside its job: ``outcome`` "failed" or "aborted"."""
    out = lk.EgressInfo.FromString(info.SerializeToString())
    return set_status(out, S.EGRESS_FAILED if outcome == "failed" else S.EGRESS_ABORTED, error, details)


def fill_results(info: lk.EgressInfo, results: Iterable[Any], locations: Mapping[str, str] | None = None) -> None:
    """Replace info's results with ``results`` (the sinks' typed results). ``locations``
    maps a local path to where it was uploaded (defaults to the local path)."""
    loc = locations or {}
    for name in ("file_results", "segment_results", "stream_results", "image_results"):
        info.ClearField(name)
    for r in results:
        if isinstance(r, FileResult):
            info.file_results.add(filename=r.filename, location=loc.get(r.location, r.location), size=r.size,
                                  duration=ns(r.duration), started_at=ns(r.started_at), ended_at=ns(r.ended_at))
        elif isinstance(r, SegmentsResult):
            pl, lpl = r.playlist_location, r.live_playlist_location or ""
            info.segment_results.add(
                playlist_name=r.playlist_name, live_playlist_name=r.live_playlist_name or "",
                playlist_location=loc.get(pl, pl), live_playlist_location=loc.get(lpl, lpl),
                segment_count=r.segment_count, size=r.size, duration=ns(r.duration),
                started_at=ns(r.started_at), ended_at=ns(r.ended_at))
        elif isinstance(r, StreamResult):
            for d in r.streams:
                info.stream_results.add(
                    url=d.url, status=_STREAM_STATUS.get(d.status.upper(), lk.StreamInfo.ACTIVE),
                    error=d.error or "", retries=d.retries, last_retry_at=ns(d.last_retry_at),
                    started_at=ns(d.started_at), ended_at=ns(d.ended_at), duration=ns(d.duration))
        elif isinstance(r, ImagesResult):
            info.image_results.add(filename_prefix=r.filename_prefix, image_count=r.image_count,
                                   started_at=ns(r.started_at), ended_at=ns(r.ended_at))
