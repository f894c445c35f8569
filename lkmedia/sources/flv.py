"""FlvSource: a live FLV byte stream (an RTMP publish, as lkmedia.rtmp hands it over) as
graph media, demuxed and decoded by PyAV.

It reads a blocking binary file object or a file descriptor (the read end of an
``lkmedia.rtmp.flv.FlvPipe``, possibly in another process), on the node's own thread.
Unlike a file, the stream has nothing to read until the publisher sends it, so it is opened
when the graph runs, not at build: the outputs' caps say only "video"/"audio" until then.
The stream ends when the writer closes the pipe (the publisher ended, dropped or stalled).
"""
from __future__ import annotations

import os
from typing import Any, BinaryIO

import av

from .file import FileSource


class FlvSource(FileSource):
    """Outputs "video" and/or "audio": raw frames (``decode=True``, video 1/90000, audio
    1/sample_rate, timestamps from ~0) or the demuxed ``av.Packet``s as they came
    (``decode=False``: H.264 and AAC passthrough). ``options``: FFmpeg demuxer options
    (``probesize``, ``analyzeduration``)."""

    def __init__(self, stream: BinaryIO | int, *, decode: bool = True, video: bool = True, audio: bool = True,
                 options: dict[str, str] | None = None, max_errors: int = 50, name: str | None = None) -> None:
        super().__init__("flv-stream", decode=decode, realtime=False, video=video, audio=audio,
                         options=options, max_errors=max_errors, name=name)
        self.display = "the FLV stream"
        self.live = True
        self._file: Any = os.fdopen(stream, "rb", buffering=0) if isinstance(stream, int) else stream

    def __repr__(self) -> str:
        return f"<FlvSource {self.name}>"

    def negotiate(self) -> None:
        """Nothing to check before the stream arrives (it is opened in ``run()``)."""

    def _open_container(self) -> Any:
        return av.open(self._file, "r", format="flv", options=self.options or None)

    def _close(self) -> None:
        try:
            super()._close()
        finally:
            f, self._file = self._file, None
            if f is not None:
                f.close()
