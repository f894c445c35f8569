"""What each sink reports it wrote: one typed result per kind of output.

Every time is Unix seconds (a float; 0.0 when unknown) and every duration seconds: the
one conversion to the nanoseconds of EgressInfo is made where the results are read
(lkmedia.egress.info).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FileResult:
    filename: str
    location: str  # the local path written
    size: int
    duration: float
    started_at: float
    ended_at: float
    format: str
    finalized: bool  # closed cleanly (an MP4 made faststart), not left as written


@dataclass
class Segment:
    filename: str
    duration: float


@dataclass
class SegmentsResult:
    playlist_name: str
    live_playlist_name: str | None
    playlist_location: str
    live_playlist_location: str | None
    segment_count: int
    duration: float
    size: int
    started_at: float
    ended_at: float
    segments: list[Segment] = field(default_factory=list)


@dataclass
class DestinationResult:
    url: str  # redacted: no stream key
    status: str  # STARTING, ACTIVE, RECONNECTING, FINISHED, FAILED
    error: str | None
    retries: int
    last_retry_at: float
    started_at: float
    ended_at: float
    duration: float
    packets: int = 0
    bytes: int = 0
    dropped: int = 0


@dataclass
class StreamResult:
    streams: list[DestinationResult] = field(default_factory=list)


@dataclass
class Image:
    filename: str
    timestamp: float


@dataclass
class ImagesResult:
    filename_prefix: str
    image_count: int
    started_at: float
    ended_at: float
    images: list[Image] = field(default_factory=list)


@dataclass
class WebSocketResult:
    url: str  # redacted
    content_type: str
    sample_rate: int
    channels: int
    bytes_sent: int
    duration: float
    messages: int
    mute_messages: int
    reconnects: int
    dropped_bytes: int


SinkResult = FileResult | SegmentsResult | StreamResult | ImagesResult | WebSocketResult
