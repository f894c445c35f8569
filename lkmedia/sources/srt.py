"""SrtSource: an SRT stream (``srt://host:port?...``, caller mode) pulled by the system
ffmpeg CLI, as the egress's SRT output pushes through it: PyAV's FFmpeg has no libsrt.

The child ffmpeg connects, remuxes what arrives to MPEG-TS without touching the codecs and
writes it to a pipe that PyAV demuxes (and decodes) on the node's own thread, as any
FileSource. The sender paces the stream (no ``realtime`` pacing here); its end closes the
connection, ffmpeg exits and the source ends. A stream that cannot be opened fails with
ffmpeg's own words; passphrases and stream ids never appear in them (StreamURL redacts).
"""
from __future__ import annotations

import collections
import errno
import re
import subprocess
import threading
from typing import Any

import av

from ..sinks.stream_url import parse_stream_url, srt_ffmpeg
from .file import FileSource

#: milliseconds libsrt waits for the listener to answer
CONNECT_TIMEOUT_MS = 5000
#: what the ffmpeg child reads before it passes the stream on: its default (5 s of media)
#: would delay the session that long, for good; less misses the audio's parameters
PROBE = ("-probesize", "200000", "-analyzeduration", "300000", "-fflags", "nobuffer")


class SrtSource(FileSource):
    """Outputs "video" and/or "audio" as FileSource does, from an SRT stream."""

    def __init__(self, url: str, *, decode: bool = True, video: bool = True, audio: bool = True,
                 options: dict[str, str] | None = None, max_errors: int = 50, name: str | None = None) -> None:
        super().__init__(url, decode=decode, realtime=False, video=video, audio=audio, options=options,
                         max_errors=max_errors, name=name)
        self.stream_url = parse_stream_url(url)  # StreamURLError for what is not srt://host:port
        self.display = self.stream_url.redacted
        self.live = True
        self._proc: subprocess.Popen[bytes] | None = None
        self._errors: collections.deque[str] = collections.deque(maxlen=5)
        self._stderr: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<SrtSource {self.name} {self.display}>"

    def _target(self) -> str:
        url = self.url
        if "connect_timeout=" not in url:
            url += ("&" if "?" in url else "?") + f"connect_timeout={CONNECT_TIMEOUT_MS}"
        return url

    def _open_container(self) -> Any:
        exe = srt_ffmpeg()
        if exe is None:
            raise OSError("pulling SRT needs the ffmpeg CLI built with libsrt (Debian's ffmpeg has it)")
        self._proc = subprocess.Popen(
            [exe, "-nostdin", "-hide_banner", "-loglevel", "error", *PROBE, "-i", self._target(), "-map", "0:v?",
             "-map", "0:a?", "-c", "copy", "-f", "mpegts", "-flush_packets", "1", "pipe:1"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._stderr = threading.Thread(target=self._read_errors, args=(self._proc,), name=f"{self.name}-ffmpeg",
                                        daemon=True)
        self._stderr.start()
        assert self._proc.stdout is not None
        try:
            return av.open(self._proc.stdout, "r", format="mpegts", options=self.options or None)
        except av.FFmpegError:
            self._stop_ffmpeg()
            raise OSError(errno.EIO, self._why()) from None

    def _read_errors(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace").strip()
            if line:
                self._errors.append(self.stream_url.scrub(line.replace(self._target(), self.display)))

    def _why(self) -> str:
        """ffmpeg's own reason, the URL left out (the caller's message names it)."""
        if self._stderr is not None:
            self._stderr.join(timeout=2)
        if not self._errors:
            return "the stream ended before its first packet"
        line = next((x for x in self._errors if "failed" in x), self._errors[-1])
        line = re.sub(r"^\[[^]]+\] ", "", line).replace(f"{self.display}: ", "").replace(f" {self.display}", " the listener")
        return f"ffmpeg: {line}"

    def _stop_ffmpeg(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if self._stderr is not None:
            self._stderr.join(timeout=2)  # (its pipe is at its end now)
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()

    def _close(self) -> None:
        try:
            super()._close()
        finally:
            self._stop_ffmpeg()
