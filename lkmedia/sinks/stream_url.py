"""Stream URLs: LiveKit's validation rules, redaction of keys, and the SRT relay command."""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from ..core.errors import LkmediaError
from ..redact import redact_key

_RTMP_RE = re.compile(r"^(rtmps?)://([^/\s?#]+)((?:/[^/\s]+)*)/([^/\s]+)/(\S+?)( live=1)?$")
_SECRET_PARAMS = ("streamid", "passphrase", "key", "token", "secret", "pass", "auth")


class StreamURLError(LkmediaError, ValueError):
    """A stream URL that cannot be used (its key redacted in the message)."""



@dataclass(frozen=True)
class StreamURL:
    url: str  # what is opened (mux:// expanded)
    redacted: str
    protocol: str  # "rtmp" | "srt"
    secrets: tuple[str, ...]  # substrings scrubbed from any text we emit

    def scrub(self, text: str) -> str:
        text = text.replace(self.url, self.redacted)
        for s in self.secrets:
            if s:
                text = text.replace(s, "***")
        return text


def _redact_srt(url: str) -> tuple[str, tuple[str, ...]]:
    parts = urlsplit(url)
    secrets: list[str] = []
    q = []
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if any(s in k.lower() for s in _SECRET_PARAMS) and v:
            secrets.append(v)
            v = redact_key(v)
        q.append(f"{k}={v}")
    red = f"srt://{parts.netloc}{parts.path}" + ("?" + "&".join(q) if q else "")
    return red, tuple(secrets)


def parse_stream_url(url: str) -> StreamURL:
    """Validate like LiveKit (``pkg/config/urls.go``): rtmp(s)://host[:port][/path]/app/key
    ( live=1), srt://host:port[?params], mux://key. Raises StreamURLError."""
    if not isinstance(url, str) or not url.strip():
        raise StreamURLError("stream URL is empty")
    url = url.strip()
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "mux":
        key = url.split("://", 1)[1]
        if not key or "/" in key:
            raise StreamURLError("mux:// URL must be mux://<stream_key>")
        url, scheme = f"rtmps://global-live.mux.com:443/app/{key}", "rtmps"
    if scheme in ("rtmp", "rtmps"):
        m = _RTMP_RE.match(url)
        if not m:
            tail = url.rsplit("/", 1)
            shown = tail[0] + "/" + redact_key(tail[1]) if len(tail) == 2 and tail[1] else url
            raise StreamURLError(
                f"invalid RTMP URL {shown!r}: expected {scheme}://host[:port]/app/stream_key")
        host = m.group(2)
        secrets: tuple[str, ...]
        if "@" in host:  # user:password@host
            secrets = (host.rsplit("@", 1)[0],)
            host = "***@" + host.rsplit("@", 1)[1]
        else:
            secrets = ()
        if ":" in host:
            h, _, port = host.rpartition(":")
            if not h or not port.isdigit() or not 0 < int(port) < 65536:
                raise StreamURLError(f"invalid RTMP URL: bad host:port {host!r}")
        key = m.group(5)
        red = f"{m.group(1)}://{host}{m.group(3)}/{m.group(4)}/{redact_key(key)}{m.group(6) or ''}"
        return StreamURL(url, red, "rtmp", (key, *secrets))
    if scheme == "srt":
        parts = urlsplit(url)
        red, secrets = _redact_srt(url)
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None or not 0 < port < 65536:
            raise StreamURLError(f"invalid SRT URL {red!r}: expected srt://host:port[?streamid=...]")
        return StreamURL(url, red, "srt", secrets)
    shown = scheme + "://..." if scheme else "(no scheme)"
    raise StreamURLError(f"unsupported stream URL {shown}: use rtmp://, rtmps://, mux:// or srt://")


def redact_url(url: str) -> str:
    """The form of ``url`` that may be logged or returned."""
    try:
        return parse_stream_url(url).redacted
    except StreamURLError:
        return "***"


_srt_ffmpeg: str | None | bool = False


def srt_ffmpeg() -> str | None:
    """Path of an ffmpeg CLI built with libsrt, or None (checked once)."""
    global _srt_ffmpeg
    if _srt_ffmpeg is False:
        exe = shutil.which("ffmpeg")
        ok = False
        if exe:
            try:
                out = subprocess.run([exe, "-hide_banner", "-protocols"], capture_output=True,
                                     text=True, timeout=10, check=False).stdout
                ok = "srt" in out.split("Output:", 1)[-1].split()
            except (OSError, subprocess.SubprocessError):
                ok = False
        _srt_ffmpeg = exe if ok else None
    return _srt_ffmpeg  # type: ignore[return-value]


def _srt_target(url: str) -> str:
    """SRT live mode drops what is still unsent at close (linger 0): linger so that a
    clean finish delivers the tail of the stream."""
    if "linger=" in url:
        return url
    return url + ("&" if "?" in url else "?") + "linger=3"
