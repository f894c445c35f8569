"""ImageSink: a JPEG thumbnail every ``capture_interval`` seconds (LiveKit's ImageOutput).

It takes raw frames (link it beside the video encoder, not after it): decoding an
encoded stream again just to grab one frame every ten seconds would waste a decoder.
``on_image(path, image)`` is called on the sink's thread once each JPEG is in place
(lkmedia.storage.images uploads it from there, without waiting on the network).
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

import av

from ..core import EOS, Caps, Gap, Sink
from .results import Image, ImagesResult

log = logging.getLogger("lkmedia.sinks.images")

SUFFIXES = ("index", "timestamp", "none_overwrite")


def _even(v: float) -> int:
    return max(2, round(v / 2) * 2)


def _qscale(quality: int) -> int:
    """Quality 1..100 (higher is better) -> MJPEG qscale 31..2."""
    return round(2 + (100 - quality) * 29 / 99)


class ImageSink(Sink):
    """Writes ``<prefix>_<00000>.jpeg`` (index), ``<prefix>_<UTC ms>.jpeg`` (timestamp) or
    ``<prefix>.jpeg`` rewritten in place (none_overwrite), from the first frame at or after
    each interval. ``width``/``height`` scale the image; with one of them the other keeps
    the aspect ratio. ``quality`` 1-100 (default: MJPEG qscale 3, about 90).
    Files are written then renamed, so a reader never sees a partial JPEG; ``on_image``
    is called after each (must not block: it runs on the sink's thread)."""

    def __init__(
        self,
        directory: str,
        *,
        filename_prefix: str = "image",
        capture_interval: float = 10.0,
        width: int | None = None,
        height: int | None = None,
        suffix: str = "index",
        quality: int | None = None,
        on_image: Callable[[str, Image], Any] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if not directory:
            raise ValueError(f"{self.name}: an output directory is required")
        if not filename_prefix or os.path.isabs(filename_prefix) or ".." in filename_prefix.split("/"):
            raise ValueError(f"{self.name}: filename_prefix must be a name inside the directory, got {filename_prefix!r}")
        if not capture_interval or capture_interval <= 0:
            raise ValueError(f"{self.name}: capture_interval must be positive, got {capture_interval!r}")
        for what, v in (("width", width), ("height", height)):
            if v is not None and (not isinstance(v, int) or v < 2):
                raise ValueError(f"{self.name}: {what} must be an integer of at least 2, got {v!r}")
        if suffix not in SUFFIXES:
            raise ValueError(f"{self.name}: suffix must be one of {', '.join(SUFFIXES)}, got {suffix!r}")
        if quality is not None and not 1 <= quality <= 100:
            raise ValueError(f"{self.name}: quality must be 1-100, got {quality!r}")
        self.directory = directory
        self.filename_prefix = filename_prefix
        self.capture_interval = float(capture_interval)
        self.width, self.height = width, height
        self.suffix = suffix
        self.qscale = _qscale(quality) if quality is not None else 3
        self.on_image = on_image
        self.images: list[Image] = []
        self._codec: Any = None
        self._size: tuple[int, int] | None = None
        self._t0: float | None = None
        self._wall0: float | None = None
        self.frames_seen = 0
        self._encoded = 0
        self.result = self._result()

    def accept_input(self, caps: Caps) -> str | None:
        if caps.media != "video":
            return f"{self.name} makes images from video, got {caps.describe()}"
        if caps.encoded:
            return (f"{self.name} takes raw video frames, got {caps.describe()}: link the images "
                    "from the raw video (beside the encoder), or decode first")
        if sum(1 for p in self.inputs.values() if p.caps is not None) > 1:
            return f"{self.name} takes one video input"
        return None

    async def setup(self) -> None:
        await self.offload(self._check_directory)

    def _check_directory(self) -> None:
        target = os.path.dirname(os.path.join(self.directory, self.filename_prefix)) or "."
        try:
            os.makedirs(target, exist_ok=True)
        except OSError as e:
            raise OSError(f"{self.name}: cannot create image directory {target!r}: {e.strerror or e}") from e
        if not os.access(target, os.W_OK):
            raise PermissionError(f"{self.name}: image directory {target!r} is not writable")

    # -- run -------------------------------------------------------------------
    async def run(self) -> None:
        ports = list(self.inputs.values())
        if not ports:
            return
        port = ports[0]
        next_t: float | None = None
        while (item := await port.get()) is not EOS:
            if isinstance(item, Gap) or item.pts is None or item.time_base is None:
                continue
            self.frames_seen += 1
            t = float(item.pts * item.time_base)
            if next_t is not None and t < next_t - 1e-6:
                continue
            if self._t0 is None:
                self._t0, self._wall0 = t, time.time()
                next_t = t
            # The next capture is the next multiple of the interval after this frame,
            # counted from the first frame, so a late frame does not shift the grid.
            while next_t is not None and next_t <= t + 1e-6:
                next_t += self.capture_interval
            await self.offload(self._capture, item, t)
        self._codec = None

    # -- sink thread ---------------------------------------------------------------
    def _out_size(self, w: int, h: int) -> tuple[int, int]:
        if self.width and self.height:
            return _even(self.width), _even(self.height)
        if self.width:
            return _even(self.width), _even(self.width * h / w)
        if self.height:
            return _even(self.height * w / h), _even(self.height)
        return _even(w), _even(h)

    def _encoder(self, size: tuple[int, int]) -> Any:
        if self._codec is None or self._size != size:
            cc = av.CodecContext.create("mjpeg", "w")
            cc.width, cc.height = size
            cc.pix_fmt = "yuvj420p"
            cc.time_base = Fraction(1, 90_000)
            cc.options = {"flags": "+qscale", "global_quality": str(self.qscale * 118),
                          "qmin": "1", "qmax": str(max(self.qscale, 2))}
            cc.open()
            self._codec, self._size = cc, size
        return self._codec

    def _capture(self, frame: av.VideoFrame, t: float) -> None:
        size = self._out_size(frame.width, frame.height)
        # reformat() returns a new frame: the received one stays untouched.
        img = frame.reformat(size[0], size[1], "yuvj420p", interpolation="BILINEAR")
        self._encoded += 1
        img.pts = self._encoded  # the encoder wants increasing timestamps
        data = b"".join(bytes(p) for p in self._encoder(size).encode(img))
        if not data:
            raise RuntimeError(f"{self.name}: the JPEG encoder returned nothing for the frame at {t:.3f} s")
        if self._t0 is None or self._wall0 is None:
            self._t0, self._wall0 = t, time.time()
        wall = self._wall0 + (t - self._t0)
        filename = self._filename(len(self.images), wall)
        path = os.path.join(self.directory, filename)
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        if self.suffix == "none_overwrite":
            self.images = [i for i in self.images if i.filename != filename]
            count = self.result.image_count + 1
        else:
            count = len(self.images) + 1
        image = Image(filename, wall)
        self.images.append(image)
        self.result = self._result(count)
        if self.on_image is not None:
            try:
                self.on_image(path, image)
            except Exception:  # the JPEG is on disk and in the result: the end still finds it
                log.exception("%s: on_image hook failed for %s", self.name, filename)

    def _filename(self, index: int, wall: float) -> str:
        if self.suffix == "index":
            return f"{self.filename_prefix}_{index:05d}.jpeg"
        if self.suffix == "timestamp":
            d = datetime.fromtimestamp(wall, UTC)
            return f"{self.filename_prefix}_{d.strftime('%Y%m%d%H%M%S')}{d.microsecond // 1000:03d}.jpeg"
        return f"{self.filename_prefix}.jpeg"

    def _result(self, count: int = 0) -> ImagesResult:
        return ImagesResult(self.filename_prefix, count, self._wall0 or 0.0,
                            self.images[-1].timestamp if self.images else 0.0, list(self.images))

    def stats(self) -> dict[str, Any]:
        return {"frames": self.frames_seen, "images": self.result.image_count}
