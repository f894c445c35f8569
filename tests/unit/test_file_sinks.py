"""FileSink: each container probed after a real encode, codec checks at build, MP4
finalisation, and files that stay playable when the writer dies mid-way."""
from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path
from typing import Any

import av
import pytest

from lkmedia.core import Graph, LinkError, NodeError, Processor
from lkmedia.nodes.encode import AudioEncoder, VideoEncoder
from lkmedia.probe import decode_errors, playable_seconds, probe
from lkmedia.sinks.file import FileSink, format_for
from lkmedia.sources.synthetic import SyntheticSource

SECONDS = 3.0
FPS = 30


async def record(sink: FileSink, vcodec: str | None, acodec: str | None, seconds: float = SECONDS) -> FileSink:
    g = Graph()
    src = SyntheticSource(width=320, height=240, fps=FPS, duration=seconds,
                          video=vcodec is not None, audio=acodec is not None)
    if vcodec:
        g.chain(src.out("video"), VideoEncoder(vcodec, width=320, height=240, fps=FPS, bitrate=300_000), sink)
    if acodec:
        g.chain(src.out("audio"), AudioEncoder(acodec), sink)
    assert await g.run() == []
    return sink


def top_level_boxes(path: str | Path) -> list[str]:
    boxes: list[str] = []
    with open(path, "rb") as f:
        while len(h := f.read(8)) == 8:
            size, kind = struct.unpack(">I4s", h)
            boxes.append(kind.decode("latin-1"))
            if size == 1:
                size = struct.unpack(">Q", f.read(8))[0] - 8
            if size == 0:
                break
            f.seek(size - 8, 1)
    return boxes


@pytest.mark.parametrize("name,vcodec,acodec,fmt,vname,aname", [
    ("out.mp4", "libx264", "aac", "mov,mp4", "h264", "aac"),
    ("vp9.mp4", "libvpx-vp9", "opus", "mov,mp4", "vp9", "opus"),
    ("out.webm", "vp8", "opus", "matroska,webm", "vp8", "opus"),
    ("out.ogg", None, "opus", "ogg", None, "opus"),
    ("out.mp3", None, "mp3", "mp3", None, "mp3"),
    ("out.mkv", "libx264", "aac", "matroska,webm", "h264", "aac"),
    ("out.ts", "libx264", "aac", "mpegts", "h264", "aac"),
    ("out.flv", "libx264", "aac", "flv", "h264", "aac"),
])
async def test_container_probes_right(tmp_path: Path, name: str, vcodec: str | None, acodec: str,
                                      fmt: str, vname: str | None, aname: str) -> None:
    path = tmp_path / "sub" / "dir" / name  # parents are created
    sink = await record(FileSink(path), vcodec, acodec)
    p = probe(str(path))
    assert p.format.startswith(fmt)
    assert [s.kind for s in p.streams] == (["video"] if vname else []) + ["audio"]
    if vname:
        v = p.stream("video")
        assert (v.codec, v.width, v.height) == (vname, 320, 240)
        assert v.frames == FPS * SECONDS
        if v.duration is not None:  # MPEG-TS/FLV give no stream duration
            assert v.duration == pytest.approx(SECONDS, abs=0.2)
    a = p.stream("audio")
    assert (a.codec, a.sample_rate, a.channels) == (aname, 48_000, 2)
    frame = {"aac": 1024, "opus": 960, "mp3": 1152}[aname]
    # Every encoded frame is there (+ the encoder's priming/flush frames).
    assert SECONDS * 48_000 / frame <= a.frames <= SECONDS * 48_000 / frame + 3
    assert p.duration == pytest.approx(SECONDS, abs=0.2)
    assert decode_errors(str(path)) == ""
    r = sink.result
    assert r.location == str(path) and r.filename == name
    assert r.size == path.stat().st_size > 0
    assert r.duration == pytest.approx(SECONDS, abs=0.2)
    assert 0 < r.started_at <= r.ended_at


async def test_mp4_is_finalised_to_faststart(tmp_path: Path) -> None:
    path = tmp_path / "a.mp4"
    sink = await record(FileSink(path), "libx264", "aac")
    boxes = top_level_boxes(path)
    assert boxes.index("moov") < boxes.index("mdat"), boxes
    assert "moof" not in boxes and "mfra" not in boxes, boxes
    assert sink.result.finalized is True
    assert sorted(os.listdir(tmp_path)) == ["a.mp4"]  # no temp file left
    # Edit lists survive the remux: both tracks start at 0 (AAC priming, B-frame delay).
    with av.open(str(path)) as c:
        starts = {s.type: float(s.start_time * s.time_base) for s in c.streams}
    assert starts == {"video": pytest.approx(0, abs=0.01), "audio": pytest.approx(0, abs=0.01)}


async def test_mp4_without_finalize_stays_fragmented(tmp_path: Path) -> None:
    path = tmp_path / "frag.mp4"
    sink = await record(FileSink(path, finalize=False, fragment_seconds=0.5), "libx264", "aac")
    boxes = top_level_boxes(path)
    assert boxes.count("moof") >= SECONDS / 0.5 - 1, boxes  # fragments every 0.5 s, not per 4 s GOP
    assert sink.result.finalized is False
    assert playable_seconds(str(path)) == pytest.approx(SECONDS, abs=0.1)
    assert decode_errors(str(path)) == ""


async def test_failed_finalisation_keeps_the_fragmented_file(tmp_path: Path) -> None:
    path = tmp_path / "keep.mp4"
    # A directory where the remux wants its temp file: the remux fails for real.
    (tmp_path / f".keep.mp4.{os.getpid()}.finalize.tmp").mkdir()
    sink = await record(FileSink(path), "libx264", "aac")
    assert sink.result.finalized is False
    assert "moof" in top_level_boxes(path)
    assert playable_seconds(str(path)) == pytest.approx(SECONDS, abs=0.1)
    assert decode_errors(str(path)) == ""


@pytest.mark.parametrize("name,vcodec,acodec", [
    ("k.mp4", "libx264", "aac"), ("k.webm", "vp8", "opus"), ("k.mkv", "libx264", "aac"),
    ("k.ogg", None, "opus"), ("k.mp3", None, "mp3"),
])
async def test_file_plays_if_the_writer_dies_mid_way(tmp_path: Path, name: str, vcodec: str | None,
                                                     acodec: str) -> None:
    """What is on disk while recording is what SIGKILL leaves: copy it mid-way and play it."""
    snap = tmp_path / ("snap" + Path(name).suffix)
    seen: dict[str, Any] = {}

    class Snapshot(FileSink):
        def write(self, packets: list[av.Packet]) -> None:
            super().write(packets)
            if not seen and self.complete_duration >= 2.0:
                seen.update(self.stats())
                shutil.copy(self.path, snap)

    await record(Snapshot(tmp_path / name, fragment_seconds=0.5), vcodec, acodec, seconds=3.0)
    written = seen["complete_duration"]
    print(f"{name}: {written:.2f} s written, {playable_seconds(str(snap)):.2f} s play")
    assert seen["packets"] > 0 and seen["bytes"] > 0  # stats() while running
    assert written >= 2.0
    # At most a fragment (0.5 s) plus the OGG page / interleaving slack is missing.
    assert playable_seconds(str(snap)) >= written - 0.8
    assert decode_errors(str(snap)) == ""


@pytest.mark.parametrize("name,vcodec,acodec,bad", [
    ("x.ogg", None, "aac", "audio codec 'aac'"),
    ("x.webm", "libx264", "opus", "video codec 'h264'"),
    ("x.mp3", "libx264", "mp3", "no video"),
    ("x.flv", "libx264", "opus", "audio codec 'opus'"),
    ("x.mp4", "vp8", "aac", "video codec 'vp8'"),
])
def test_bad_codec_for_container_fails_at_build(tmp_path: Path, name: str, vcodec: str | None,
                                                acodec: str, bad: str) -> None:
    g = Graph()
    src = SyntheticSource(width=320, height=240, duration=1, video=vcodec is not None)
    sink = FileSink(tmp_path / name, name="rec")
    encs = []
    if vcodec:
        encs.append(VideoEncoder(vcodec, width=320, height=240, name="venc"))
        g.chain(src.out("video"), encs[-1], sink)
    encs.append(AudioEncoder(acodec, name="aenc"))
    g.chain(src.out("audio"), encs[-1], sink)
    with pytest.raises(LinkError, match=bad) as e:
        g.build()
    assert "rec." in str(e.value) and "enc.out" in str(e.value)  # names both nodes
    assert not (tmp_path / name).exists()


def test_raw_media_is_refused_at_build(tmp_path: Path) -> None:
    g = Graph()
    src = SyntheticSource(width=320, height=240, duration=1, video=False)
    g.link(src.out("audio"), FileSink(tmp_path / "x.ogg", name="rec"))
    with pytest.raises(LinkError, match="encoded packets.*put an encoder"):
        g.build()


async def test_unwritable_path_fails_at_setup_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    path = blocker / "rec" / "out.mp4"
    g = Graph()
    src = SyntheticSource(width=320, height=240, duration=1, video=False)
    g.chain(src.out("audio"), AudioEncoder("aac"), FileSink(path, name="rec"))
    with pytest.raises(NodeError, match=f"rec: .*cannot write {path}"):
        await g.start()


def test_format_from_extension_or_argument(tmp_path: Path) -> None:
    assert format_for("a.MP4").name == "mp4"
    assert format_for("a.opus").name == "ogg"
    assert format_for("a.bin", "matroska").name == "mkv"
    assert FileSink(tmp_path / "noext", "mp4").format.muxer == "mp4"
    with pytest.raises(ValueError, match=r"cannot tell the container of .*'\.avi'"):
        FileSink(tmp_path / "x.avi")
    with pytest.raises(ValueError, match="unknown file format 'avi'"):
        FileSink(tmp_path / "x.mp4", "avi")
    with pytest.raises(ValueError, match="fragment_seconds"):
        FileSink(tmp_path / "x.mp4", fragment_seconds=0)


async def test_cancel_leaves_a_playable_fragmented_mp4(tmp_path: Path) -> None:
    import asyncio

    path = tmp_path / "cancelled.mp4"
    g = Graph()
    src = SyntheticSource(width=320, height=240, fps=FPS, live=True)
    sink = FileSink(path)
    g.chain(src.out("video"), VideoEncoder("libx264", width=320, height=240, fps=FPS, bitrate=300_000), sink)
    g.chain(src.out("audio"), AudioEncoder("aac"), sink)
    await g.start()
    await asyncio.sleep(2.0)
    written = sink.stats()["complete_duration"]
    await g.cancel()
    assert sink.result.finalized is False and sink.result.size == path.stat().st_size
    assert "moof" in top_level_boxes(path)
    assert playable_seconds(str(path)) >= written - 0.6
    assert decode_errors(str(path)) == ""


class _Later(Processor):
    """Moves every frame 1.5 s later: media that starts after the graph did."""

    def process(self, frame: Any) -> Any:
        frame.pts += round(1.5 / float(frame.time_base))
        return (frame,)


@pytest.mark.parametrize("start_at_zero, expect", [(True, 2.0), (False, 3.5)])
async def test_start_at_zero_rebases_a_late_single_stream(tmp_path: Path, start_at_zero: bool,
                                                          expect: float) -> None:
    path = tmp_path / "late.ogg"
    g = Graph()
    src = g.add(SyntheticSource(video=False, duration=2.0))
    g.chain(src.out("audio"), _Later(), AudioEncoder("opus"), FileSink(path, start_at_zero=start_at_zero))
    await g.run()
    p = probe(str(path))
    # ffprobe counts an OGG from 0: without the rebase, the 1.5 s before the media show.
    assert p.duration == pytest.approx(expect, abs=0.1), p.duration
    assert decode_errors(str(path)) == ""
