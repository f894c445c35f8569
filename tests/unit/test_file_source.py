"""FileSource and Decoder on real media made with the ffmpeg CLI."""
from __future__ import annotations

import asyncio
import functools
import http.server
import itertools
import random
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import pytest

from lkmedia.core import EOS, Graph, GraphError, LkmediaError, Sink
from lkmedia.nodes.decode import Decoder
from lkmedia.nodes.encode import VideoEncoder
from lkmedia.probe import decode_errors, probe
from lkmedia.sinks.file import FileSink
from lkmedia.sources.file import FileSource, SourceOpenError, redact_url
from lkmedia.sources.synthetic import SyntheticSource

VTB = Fraction(1, 90_000)


class Collect(Sink):
    """Keeps every item with its arrival time on the graph clock."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name)
        self.items: list[Any] = []
        self.arrivals: list[float] = []
        self.finalised = False

    async def run(self) -> None:
        for port in list(self.inputs.values()):
            while (item := await port.get()) is not EOS:
                self.items.append(item)
                self.arrivals.append(self.graph.clock.now() if self.graph else 0.0)
        self.finalised = True


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True, timeout=30)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    m = {"mp4": d / "in.mp4", "webm": d / "in.webm", "ts": d / "in.ts", "m4a": d / "in.m4a"}
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30", "-f", "lavfi", "-i",
           "sine=frequency=440:sample_rate=48000", "-t", "3", "-c:v", "libx264", "-preset", "ultrafast",
           "-c:a", "aac", str(m["mp4"]))
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-f", "lavfi", "-i",
           "sine=frequency=440:sample_rate=48000", "-t", "3", "-c:v", "libvpx", "-deadline", "realtime",
           "-c:a", "libopus", str(m["webm"]))
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-f", "lavfi", "-i",
           "sine=frequency=440:sample_rate=48000", "-t", "4", "-c:v", "libx264", "-preset", "ultrafast",
           "-g", "30", "-c:a", "aac", str(m["ts"]))
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "4", "-c:a", "aac", str(m["m4a"]))
    return m


def damage(src: Path, dst: Path, start: float, length: int) -> None:
    """Overwrite ``length`` bytes at fraction ``start`` of the file with noise."""
    b = bytearray(src.read_bytes())
    pos = int(len(b) * start)
    b[pos:pos + length] = random.Random(7).randbytes(length)
    dst.write_bytes(bytes(b))


async def read_all(url: Any, **kw: Any) -> tuple[FileSource, dict[str, Collect]]:
    g = Graph()
    src = FileSource(url, **kw)
    sinks = {}
    for kind in list(src.outputs):
        sinks[kind] = Collect(kind)
        g.link(src.out(kind), sinks[kind])
    await asyncio.wait_for(g.run(), 30)
    return src, sinks


def packet_sizes(path: Path) -> dict[str, list[int]]:
    with av.open(str(path)) as c:
        out: dict[str, list[int]] = {"video": [], "audio": []}
        for p in c.demux():
            if p.size:
                out[p.stream.type].append(p.size)
    return out


# -- decoding -------------------------------------------------------------------
async def test_decode_mp4_counts_caps_and_timestamps(media: dict[str, Path]) -> None:
    src, s = await read_all(media["mp4"])
    vcaps, acaps = src.outputs["video"].caps, src.outputs["audio"].caps
    assert (vcaps.width, vcaps.height, vcaps.fps, vcaps.pix_fmt, vcaps.encoded) == (640, 360, 30, "yuv420p", False)
    assert (acaps.sample_rate, acaps.layout) == (48_000, "mono")
    video, audio = s["video"].items, s["audio"].items
    assert len(video) == 90
    assert all(f.time_base == VTB for f in video)
    assert [f.pts for f in video] == [i * 3000 for i in range(90)]
    assert (video[0].width, video[0].height) == (640, 360)
    samples = sum(f.samples for f in audio)
    assert abs(samples - 3 * 48_000) <= 1024
    assert audio[0].pts == 0 and all(f.time_base == Fraction(1, 48_000) for f in audio)
    for a, b in itertools.pairwise(audio):  # pts count samples, without holes
        assert b.pts == a.pts + a.samples
    assert src.stats()["frames"] == 90 and src.stats()["errors"] == 0


async def test_decode_webm_vp8_opus(media: dict[str, Path]) -> None:
    _src, s = await read_all(media["webm"])
    assert len(s["video"].items) == 90
    assert abs(sum(f.samples for f in s["audio"].items) - 3 * 48_000) <= 960
    assert s["video"].items[0].pts < 3000  # starts near 0 (WebM video starts at 7 ms)
    audio = s["audio"].items
    assert all(b.pts == a.pts + a.samples for a, b in itertools.pairwise(audio))


async def test_mpegts_starts_near_zero_and_keeps_av_offset(media: dict[str, Path]) -> None:
    # MPEG-TS starts at 1.4 s: both tracks move by the same amount.
    _src, s = await read_all(media["ts"])
    v0 = s["video"].items[0].pts * VTB
    a0 = Fraction(s["audio"].items[0].pts, 48_000)
    assert min(v0, a0) == 0 and abs(v0 - a0) < Fraction(1, 10)
    assert len(s["video"].items) == 120


async def test_only_enabled_and_present_outputs(media: dict[str, Path], tmp_path: Path) -> None:
    assert set(FileSource(media["mp4"], audio=False).outputs) == {"video"}
    src = FileSource(media["m4a"])
    src.open()  # learn what the input has before linking
    assert set(src.outputs) == {"audio"}
    cover = tmp_path / "cover.mp3"  # an MP3 with cover art: the picture is no video track
    ffmpeg("-f", "lavfi", "-i", "sine=sample_rate=44100:duration=1", "-f", "lavfi", "-i",
           "testsrc2=size=64x64:rate=1:duration=1", "-map", "0:a", "-map", "1:v", "-c:a", "libmp3lame",
           "-c:v", "mjpeg", "-disposition:v", "attached_pic", str(cover))
    src = FileSource(cover)
    src.open()
    assert set(src.outputs) == {"audio"} and src.outputs["audio"].caps.sample_rate == 44_100
    g = Graph()
    g.link(FileSource(media["m4a"], name="song").out("video"), Collect())
    with pytest.raises(SourceOpenError, match="has no video stream"):
        g.build()


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A local HTTP server on ``tmp_path``."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield tmp_path, f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


async def test_reads_hls_over_http(media: dict[str, Path], http_root: tuple[Path, str]) -> None:
    root, base = http_root
    (root / "hls").mkdir()
    ffmpeg("-i", str(media["mp4"]), "-c", "copy", "-f", "hls", "-hls_time", "1", "-hls_list_size", "0",
           str(root / "hls" / "index.m3u8"))
    src, s = await read_all(f"{base}/hls/index.m3u8?token=SECRET")
    assert len(s["video"].items) == 90
    assert abs(sum(f.samples for f in s["audio"].items) - 3 * 48_000) <= 2048
    assert "SECRET" not in repr(src) and "SECRET" not in src.display


# -- passthrough ------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["mp4", "webm"])
async def test_passthrough_remux_copies_packets(media: dict[str, Path], tmp_path: Path, kind: str) -> None:
    src = FileSource(media[kind], decode=False)
    out = tmp_path / f"copy.{kind}"
    sink = FileSink(out)
    g = Graph()
    g.link(src.out("video"), sink)
    g.link(src.out("audio"), sink)
    g.build()
    assert src.outputs["video"].caps.encoded and src.outputs["video"].caps.codec == ("h264" if kind == "mp4" else "vp8")
    await asyncio.wait_for(g.run(), 30)
    pin, pout = probe(str(media[kind])), probe(str(out))
    for k in ("video", "audio"):
        assert pout.stream(k).codec == pin.stream(k).codec
        assert pout.stream(k).frames == pin.stream(k).frames
    assert abs((pout.duration or 0) - (pin.duration or 0)) < 0.2
    assert packet_sizes(out) == packet_sizes(media[kind])  # same bytes: no re-encode
    assert decode_errors(str(out)) == ""


# -- Decoder node -------------------------------------------------------------------
async def test_decoder_node_matches_direct_decode(media: dict[str, Path]) -> None:
    _, direct = await read_all(media["webm"])
    g = Graph()
    src = FileSource(media["webm"], decode=False)
    sinks = {k: Collect(k) for k in ("video", "audio")}
    for k, sink in sinks.items():
        g.chain(src.out(k), Decoder(name=f"dec-{k}"), sink)
    g.build()
    assert g.nodes["dec-video"].outputs["out"].caps.width == 320
    assert not g.nodes["dec-audio"].outputs["out"].caps.encoded
    await asyncio.wait_for(g.run(), 30)
    assert [f.pts for f in sinks["video"].items] == [f.pts for f in direct["video"].items]
    assert all(f.time_base == VTB for f in sinks["video"].items)
    assert sum(f.samples for f in sinks["audio"].items) == sum(f.samples for f in direct["audio"].items)
    assert all(f.time_base == Fraction(1, 48_000) for f in sinks["audio"].items)


async def test_decoder_takes_encoder_packets() -> None:
    g = Graph()
    src = SyntheticSource(width=320, height=240, fps=30, duration=1, audio=False)
    sink = Collect()
    g.chain(src, VideoEncoder("libx264", width=320, height=240, fps=30, bitrate=500_000), Decoder(), sink)
    await asyncio.wait_for(g.run(), 30)
    assert len(sink.items) == 30
    assert [f.pts for f in sink.items] == [i * 3000 for i in range(30)]


# -- realtime ---------------------------------------------------------------------
async def test_realtime_paces_by_timestamps(media: dict[str, Path]) -> None:
    t0 = time.monotonic()
    _src, s = await read_all(media["webm"], realtime=True, audio=False)
    wall = time.monotonic() - t0
    assert len(s["video"].items) == 90
    assert 2.7 < wall < 4.0
    lag = [arr - f.pts * float(VTB) for f, arr in zip(s["video"].items, s["video"].arrivals)]
    assert max(lag) - min(lag) < 0.3  # each frame arrives when its timestamp says


async def test_stop_ends_a_realtime_source_early(media: dict[str, Path]) -> None:
    g = Graph()
    src = FileSource(media["mp4"], realtime=True)
    v, a = Collect("v"), Collect("a")
    g.link(src.out("video"), v)
    g.link(src.out("audio"), a)
    await g.start()
    await asyncio.sleep(1.0)
    t0 = time.monotonic()
    await g.stop(timeout=5)
    assert time.monotonic() - t0 < 1.0
    assert 20 <= len(v.items) <= 45 and v.finalised and a.finalised


# -- bad input --------------------------------------------------------------------
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_bad_inputs_fail_at_build_with_clear_messages(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(random.Random(1).randbytes(100_000))
    port = closed_port()
    cases = [
        (str(tmp_path / "missing.mp4"), "No such file"),
        (f"http://user:pw@127.0.0.1:{port}/live/x.mp4?token=SECRET", "refused"),
        (str(junk), "Invalid data"),
    ]
    for url, why in cases:
        g = Graph()
        src = FileSource(url, timeout=3)
        g.link(src.out("video"), Collect())
        t0 = time.monotonic()
        with pytest.raises(LkmediaError) as ei:
            g.build()
        msg = str(ei.value)
        assert why.lower() in msg.lower() and src.name in msg, msg
        assert "SECRET" not in msg and "pw" not in msg, msg
        assert (url.split("?")[0].split("@")[-1] if "://" in url else url) in msg, msg
        assert time.monotonic() - t0 < 3


async def test_silent_server_times_out_at_build() -> None:
    with socket.socket() as srv:  # accepts connections, never answers
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)
        url = f"rtmp://127.0.0.1:{srv.getsockname()[1]}/live/sk_secret"
        g = Graph()
        g.link(FileSource(url, timeout=1.0).out("video"), Collect())
        t0 = time.monotonic()
        with pytest.raises(SourceOpenError, match=r"no answer within 1 s") as ei:
            g.build()
        assert 0.9 < time.monotonic() - t0 < 3
        assert "sk_secret" not in str(ei.value) and "/live/{sk_...ret}" in str(ei.value) or "/live/{" in str(ei.value)


def test_redact_url() -> None:
    assert redact_url("rtmp://a.example/live/sk_123") == "rtmp://a.example/live/{sk...23}"
    assert redact_url("https://u:p@h.example:8443/x.m3u8?sig=abc") == "https://***@h.example:8443/x.m3u8?***"
    assert redact_url("/tmp/a b.mp4") == "/tmp/a b.mp4"


async def test_corrupt_mpegts_keeps_going(media: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.ts"
    damage(media["ts"], bad, 0.5, 60_000)
    _src, s = await read_all(bad)  # wait_for inside: must not hang
    times = [f.pts * float(VTB) for f in s["video"].items]
    assert 60 < len(times) < 120  # frames were lost...
    assert times[0] < 0.2 and max(times) > 3.5  # ...yet media before and after the damage came out
    assert max(f.pts / 48_000 for f in s["audio"].items) > 3.5


async def test_corrupt_packets_are_skipped_then_the_source_gives_up(media: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.m4a"
    damage(media["m4a"], bad, 0.2, 8000)  # inside the audio data (the index is at the end)
    src, s = await read_all(bad, video=False)
    assert src.stats()["errors"] > 5
    assert s["audio"].items[-1].pts / 48_000 > 3.5  # read to the end past the damage
    g = Graph()
    src = FileSource(bad, video=False, max_errors=3)
    sink = Collect()
    g.link(src, sink)
    with pytest.raises(GraphError, match="corrupt packets in a row"):
        await asyncio.wait_for(g.run(), 30)
    assert sink.finalised and len(sink.items) > 10  # what came before stays delivered
    # The Decoder node skips the same bad packets when the source passes them through.
    g = Graph()
    dec, sink = Decoder(), Collect()
    g.chain(FileSource(bad, video=False, decode=False), dec, sink)
    await asyncio.wait_for(g.run(), 30)
    assert dec.stats()["errors"] > 5 and sink.items[-1].pts / 48_000 > 3.5
