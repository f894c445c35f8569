"""ImageSink on synthetic video: counts, sizes, JPEGs that decode, the frame at each
interval (the synthetic flash), naming modes, refusing encoded input."""
from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from typing import Any

import av
import numpy as np
import pytest

from lkmedia.core import Graph, LinkError
from lkmedia.nodes.encode import VideoEncoder
from lkmedia.sinks.images import ImageSink
from lkmedia.sources.synthetic import SyntheticSource


def read_jpeg(path: str) -> tuple[str, int, int, float]:
    """(codec, width, height, mean luma) of a decoded JPEG."""
    with av.open(path) as c:
        s = c.streams.video[0]
        frame = next(c.decode(s))
        y = frame.to_ndarray(format="gray")
        return s.codec_context.name, frame.width, frame.height, float(y.mean())


async def run_images(seconds: float, **kw: Any) -> ImageSink:
    g = Graph()
    sink = ImageSink(**kw)
    g.link(SyntheticSource(width=640, height=360, duration=seconds, audio=False), sink)
    assert await g.run() == []
    return sink


async def test_one_jpeg_per_interval_scaled_keeping_aspect(tmp_path: Any) -> None:
    sink = await run_images(4.5, directory=str(tmp_path), capture_interval=1, width=320)
    r = sink.result
    assert r.image_count == 5 and r.filename_prefix == "image"
    names = [i.filename for i in r.images]
    assert names == [f"image_{i:05d}.jpeg" for i in range(5)]
    assert sorted(os.listdir(tmp_path)) == names
    for n in names:
        codec, w, h, luma = read_jpeg(str(tmp_path / n))
        # The first frame at or after each whole second is the synthetic white flash.
        assert (codec, w, h) == ("mjpeg", 320, 180) and luma > 200, (n, codec, w, h, luma)
    stamps = [i.timestamp for i in r.images]
    assert np.allclose(np.diff(stamps), 1.0, atol=1e-3)


async def test_height_only_uneven_interval_and_full_size(tmp_path: Any) -> None:
    sink = await run_images(4.5, directory=str(tmp_path / "a"), capture_interval=1.5, height=120,
                            filename_prefix="thumbs/cam")
    assert sink.result.image_count == 3  # 0, 1.5, 3.0 s
    for i in sink.result.images:
        assert read_jpeg(str(tmp_path / "a" / i.filename))[1:3] == (214, 120)
    assert sink.result.images[0].filename == "thumbs/cam_00000.jpeg"
    full = await run_images(1.0, directory=str(tmp_path / "b"), capture_interval=10, quality=50)
    assert full.result.image_count == 1
    assert read_jpeg(str(tmp_path / "b" / "image_00000.jpeg"))[1:3] == (640, 360)


async def test_timestamp_suffix_and_overwrite(tmp_path: Any) -> None:
    ts = await run_images(2.5, directory=str(tmp_path / "ts"), capture_interval=1, suffix="timestamp")
    assert ts.result.image_count == 3
    for i in ts.result.images:
        m = re.fullmatch(r"image_(\d{14})(\d{3})\.jpeg", i.filename)
        assert m, i.filename
        t = datetime.strptime(m.group(1), "%Y%m%d%H%M%S").replace(
            microsecond=int(m.group(2)) * 1000, tzinfo=UTC).timestamp()
        assert abs(t - i.timestamp) < 0.002
        assert read_jpeg(str(tmp_path / "ts" / i.filename))[0] == "mjpeg"

    ow = await run_images(3.5, directory=str(tmp_path / "ow"), capture_interval=1, suffix="none_overwrite",
                          filename_prefix="latest", width=160, height=90)
    assert ow.result.image_count == 4
    assert os.listdir(tmp_path / "ow") == ["latest.jpeg"]
    assert [i.filename for i in ow.result.images] == ["latest.jpeg"]
    assert read_jpeg(str(tmp_path / "ow" / "latest.jpeg"))[:3] == ("mjpeg", 160, 90)


def test_encoded_input_and_bad_parameters_are_refused(tmp_path: Any) -> None:
    g = Graph()
    g.chain(SyntheticSource(width=320, height=240, duration=1, audio=False),
            VideoEncoder(width=320, height=240, name="enc"), ImageSink(str(tmp_path), name="thumbs"))
    with pytest.raises(LinkError, match="enc.*thumbs.*takes raw video frames.*beside the encoder"):
        g.build()
    with pytest.raises(ValueError, match="suffix"):
        ImageSink(str(tmp_path), suffix="index_overwrite")
    with pytest.raises(ValueError, match="capture_interval"):
        ImageSink(str(tmp_path), capture_interval=0)
    with pytest.raises(ValueError, match="quality"):
        ImageSink(str(tmp_path), quality=0)
