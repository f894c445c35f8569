"""HLSSink on synthetic media: playlists parse, every segment plays, durations and
program-date-times hold, the live playlist slides, audio-only works."""
from __future__ import annotations

import asyncio
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest

from lkmedia.core import Graph, LinkError
from lkmedia.nodes.encode import AudioEncoder, VideoEncoder
from lkmedia.probe import decode_errors, probe
from lkmedia.sinks.segments import HLSSink
from lkmedia.sources.synthetic import SyntheticSource


@dataclass
class Entry:
    uri: str
    duration: float
    pdt: datetime | None


@dataclass
class Playlist:
    version: int | None = None
    target: int | None = None
    sequence: int = 0
    kind: str | None = None
    ended: bool = False
    entries: list[Entry] = field(default_factory=list)


def parse_m3u8(path: str) -> Playlist:
    """A small strict parser for the media playlists HLSSink writes."""
    with open(path, encoding="utf-8") as f:
        lines = [ln.strip() for ln in f if ln.strip()]
    assert lines[0] == "#EXTM3U", f"{path}: no #EXTM3U header"
    pl = Playlist()
    dur: float | None = None
    pdt: datetime | None = None
    for ln in lines[1:]:
        if ln.startswith("#EXT-X-VERSION:"):
            pl.version = int(ln.split(":", 1)[1])
        elif ln.startswith("#EXT-X-TARGETDURATION:"):
            pl.target = int(ln.split(":", 1)[1])
        elif ln.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            pl.sequence = int(ln.split(":", 1)[1])
        elif ln.startswith("#EXT-X-PLAYLIST-TYPE:"):
            pl.kind = ln.split(":", 1)[1]
        elif ln.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
            pdt = datetime.fromisoformat(ln.split(":", 1)[1])
        elif ln.startswith("#EXTINF:"):
            dur = float(ln.split(":", 1)[1].rstrip(",").split(",")[0])
        elif ln == "#EXT-X-ENDLIST":
            pl.ended = True
        elif ln.startswith("#"):
            raise AssertionError(f"{path}: unexpected tag {ln!r}")
        else:
            assert dur is not None, f"{path}: {ln} has no #EXTINF"
            pl.entries.append(Entry(ln, dur, pdt))
            dur, pdt = None, None
    assert pl.target is not None, f"{path}: no #EXT-X-TARGETDURATION"
    return pl


async def run_av_hls(out: str, seconds: float = 10.0, **kw: Any) -> tuple[HLSSink, list[tuple[str, float, Playlist]]]:
    g = Graph()
    src = SyntheticSource(width=640, height=360, duration=seconds)
    seen: list[tuple[str, float, Playlist]] = []

    def on_segment(path: str, duration: float) -> None:
        # Playlists are written before the callback: a reader sees this segment now.
        seen.append((path, duration, parse_m3u8(os.path.join(out, sink.playlist_name))))

    sink = HLSSink(out, on_segment=on_segment, **kw)
    g.chain(src.out("video"), VideoEncoder(width=640, height=360, fps=30, bitrate=400_000,
                                           keyframe_interval=kw.get("segment_duration", 4.0)), sink)
    g.chain(src.out("audio"), AudioEncoder("aac"), sink)
    assert await g.run() == []
    return sink, seen


async def test_av_hls_playlists_segments_and_program_date_time(tmp_path: Any) -> None:
    out = str(tmp_path / "hls")
    sink, seen = await run_av_hls(out, filename_prefix="seg", segment_duration=2,
                                  live_playlist_name="live.m3u8", live_window=3)
    full = parse_m3u8(os.path.join(out, "playlist.m3u8"))
    live = parse_m3u8(os.path.join(out, "live.m3u8"))

    assert full.kind == "EVENT" and full.ended and full.sequence == 0
    names = [e.uri for e in full.entries]
    assert names == [f"seg_{i:05d}.ts" for i in range(len(names))] and len(names) == 5
    for e in full.entries[:-1]:
        assert abs(e.duration - 2.0) <= 0.2, (e.uri, e.duration)
    total = sum(e.duration for e in full.entries)
    assert abs(total - 10.0) <= 0.2
    assert full.target == math.ceil(max(e.duration for e in full.entries) - 1e-3)

    # Every segment plays on its own, with both streams.
    for e in full.entries:
        path = os.path.join(out, e.uri)
        assert decode_errors(path) == "", e.uri
        p = probe(path)
        assert p.stream("video").codec == "h264" and p.stream("audio").codec == "aac"
        assert p.stream("video").frames and p.stream("video").frames >= 55
    # ... and the playlist plays as a whole.
    whole = probe(os.path.join(out, "playlist.m3u8"))
    assert whole.duration is not None and abs(whole.duration - 10.0) <= 0.2
    assert decode_errors(os.path.join(out, "playlist.m3u8")) == ""

    # Program date time: on every segment, advancing by exactly the segment durations.
    pdts = [e.pdt for e in full.entries]
    assert all(pdts)
    for a, b in zip(full.entries, full.entries[1:]):
        assert b.pdt > a.pdt  # type: ignore[operator]
        assert abs((b.pdt - a.pdt).total_seconds() - a.duration) < 0.002  # type: ignore[operator]

    # Live playlist: the last three, media sequence = index of its first segment.
    assert live.kind is None and live.ended and live.sequence == 2
    assert [e.uri for e in live.entries] == names[-3:]
    assert [e.pdt for e in live.entries] == pdts[-3:]

    # Playlists were rewritten after every segment, before on_segment.
    assert [os.path.basename(p) for p, _, _ in seen] == names
    for i, (_, d, pl) in enumerate(seen):
        assert [e.uri for e in pl.entries] == names[: i + 1]
        assert abs(d - full.entries[i].duration) < 0.001
    assert not any(pl.ended for _, _, pl in seen[:-1])

    r = sink.result
    assert r.segment_count == 5 and r.playlist_name == "playlist.m3u8"
    assert r.live_playlist_name == "live.m3u8"
    assert r.playlist_location == os.path.abspath(os.path.join(out, "playlist.m3u8"))
    assert abs(r.duration - total) < 0.01
    assert r.size == sum(os.path.getsize(os.path.join(out, n)) for n in names)
    assert [s.filename for s in r.segments] == names
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


async def test_timestamp_suffix_names_match_program_date_time(tmp_path: Any) -> None:
    out = str(tmp_path / "ts")
    sink, _ = await run_av_hls(out, seconds=4.0, filename_prefix="rec", segment_duration=2,
                               suffix="timestamp")
    full = parse_m3u8(os.path.join(out, "playlist.m3u8"))
    assert len(full.entries) == 2
    for e in full.entries:
        m = re.fullmatch(r"rec_(\d{14})(\d{3})\.ts", e.uri)
        assert m, e.uri
        t = datetime.strptime(m.group(1), "%Y%m%d%H%M%S").replace(microsecond=int(m.group(2)) * 1000)
        assert e.pdt is not None
        assert abs((e.pdt.replace(tzinfo=None) - t).total_seconds()) < 0.002
        assert decode_errors(os.path.join(out, e.uri)) == ""
    assert sink.result.segment_count == 2


async def test_audio_only_hls(tmp_path: Any) -> None:
    out = str(tmp_path / "audio")
    g = Graph()
    src = SyntheticSource(duration=5.0, video=False)
    sink = HLSSink(out, segment_duration=2, program_date_time=False, playlist_name="audio")
    g.chain(src, AudioEncoder("aac"), sink)
    assert await g.run() == []
    pl = parse_m3u8(os.path.join(out, "audio.m3u8"))
    assert pl.ended and len(pl.entries) == 3 and all(e.pdt is None for e in pl.entries)
    assert [e.uri for e in pl.entries] == ["00000.ts", "00001.ts", "00002.ts"]
    for e in pl.entries[:-1]:
        assert 1.8 <= e.duration <= 2.0 + 1e-3  # cut before the target is overshot
    assert abs(sum(e.duration for e in pl.entries) - 5.0) <= 0.2
    assert pl.target == 2
    for e in pl.entries:
        path = os.path.join(out, e.uri)
        p = probe(path)
        assert not p.has("video") and p.stream("audio").codec == "aac"
        assert decode_errors(path) == ""


def test_bad_parameters_are_named(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="live_playlist_name must differ"):
        HLSSink(str(tmp_path), playlist_name="a.m3u8", live_playlist_name="a")
    with pytest.raises(ValueError, match="same directory"):
        HLSSink(str(tmp_path), live_playlist_name="sub/live.m3u8")
    with pytest.raises(ValueError, match="suffix"):
        HLSSink(str(tmp_path), suffix="uuid")
    with pytest.raises(ValueError, match="segment_duration"):
        HLSSink(str(tmp_path), segment_duration=0)


async def test_opus_and_unwritable_directory_fail_clearly(tmp_path: Any) -> None:
    g = Graph()
    g.chain(SyntheticSource(duration=1, video=False), AudioEncoder("opus", name="opus"),
            HLSSink(str(tmp_path), name="hls"))
    with pytest.raises(LinkError, match="opus.*hls.*HLS cannot carry audio codec 'opus'"):
        g.build()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    g2 = Graph()
    g2.chain(SyntheticSource(duration=1, video=False), AudioEncoder("aac"),
             HLSSink(str(blocker / "hls"), name="hls2"))
    with pytest.raises(Exception, match="hls2: cannot create HLS directory"):
        await g2.run()


async def test_cancel_keeps_a_playable_playlist(tmp_path: Any) -> None:
    out = str(tmp_path / "cancel")
    g = Graph()
    src = SyntheticSource(width=320, height=240, duration=10.0, live=True)
    sink = HLSSink(out, segment_duration=1, live_playlist_name="live.m3u8")
    g.chain(src.out("video"), VideoEncoder(width=320, height=240, fps=30, bitrate=300_000,
                                           keyframe_interval=1), sink)
    g.chain(src.out("audio"), AudioEncoder("aac"), sink)
    await g.start()
    await asyncio.sleep(2.6)
    await g.cancel()
    pl = parse_m3u8(os.path.join(out, "playlist.m3u8"))
    assert pl.ended and len(pl.entries) >= 2
    for e in pl.entries:
        assert decode_errors(os.path.join(out, e.uri)) == "", e.uri
    assert sink.result.segment_count == len(pl.entries)
